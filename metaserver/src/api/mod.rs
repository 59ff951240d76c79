//! `cairn.meta.v1.MetaService`: a thin tonic adapter over [`NamespaceNode`]. Handlers convert
//! the request ([`convert`]), delegate, and convert the answer; POSIX errors go into `errno`,
//! runtime errors become a status through [`error::status`].

pub mod convert;
pub mod error;
pub mod leader_hint;

use cairn_proto::meta as pb;
use cairn_proto::meta::meta_service_server::{MetaService, MetaServiceServer};
use cairn_proto::META_REQUEST_HEADER;
use tonic::metadata::MetadataMap;
use tonic::{Request, Response, Status};

use std::sync::{Arc, Mutex};
use std::time::Instant;

use crate::chunks::leader::{FsckReport, RPC_FLUSH_TRUNCATES, RPC_FSCK, RPC_REPORT_FAILURE};
use crate::chunks::placement::place;
use crate::chunks::{ChunkManager, FailureReport};
use crate::limits::{CLOSE_MANY_HANDLES_MAX, GRPC_MESSAGE_BYTES_MAX, REQUEST_TIMEOUT, SPACE_WARN_INTERVAL};
use crate::namespace::command::{decode_outcome, RequestId};
use crate::namespace::{
    chunks as chunk_map, locks, read, ChunkId, Errno, FileKind, Inode, InodeId, LockKind, LockOwner, Op, Outcome,
    Replica, Reply, SessionId, SetAttr, Timespec,
};
use crate::node::namespace::NamespaceNode;
use convert::{attr, caller, time};
use error::status;

pub struct MetaApi {
    node: NamespaceNode,
    chunks: Arc<ChunkManager>,
    /// When "no chunkserver has room" was last logged (at most once per `SPACE_WARN_INTERVAL`).
    no_room_logged: Mutex<Option<Instant>>,
}

impl MetaApi {
    pub fn server(node: NamespaceNode, chunks: Arc<ChunkManager>) -> MetaServiceServer<MetaApi> {
        MetaServiceServer::new(MetaApi { node, chunks, no_room_logged: Mutex::new(None) })
            .max_decoding_message_size(GRPC_MESSAGE_BYTES_MAX)
            .max_encoding_message_size(GRPC_MESSAGE_BYTES_MAX)
    }
}

type Answer<T> = Result<Response<T>, Status>;

/// The request id a client sent in [`META_REQUEST_HEADER`]; none when absent or malformed (the
/// change then applies as often as it is sent, as for clients without sessions).
fn request_id(metadata: &MetadataMap) -> Option<RequestId> {
    let value = metadata.get(META_REQUEST_HEADER)?.to_str().ok()?;
    let mut fields = value.splitn(3, ':').map(str::parse::<u64>);
    let (Some(Ok(session)), Some(Ok(seq)), Some(Ok(done_below))) = (fields.next(), fields.next(), fields.next()) else {
        return None;
    };
    (session != 0).then_some(RequestId { session: SessionId(session), seq, done_below })
}

/// The answer to a read of an inode's attributes with its allocated bytes.
fn read_attr_response(result: Result<(Inode, u64), Errno>) -> pb::AttrResponse {
    match result {
        Ok((inode, allocated)) => pb::AttrResponse { errno: 0, attr: Some(convert::attr_allocated(&inode, allocated)) },
        Err(e) => pb::AttrResponse { errno: e.code(), attr: None },
    }
}

fn errno_response(outcome: Outcome) -> Answer<pb::ErrnoResponse> {
    Ok(Response::new(pb::ErrnoResponse { errno: outcome.err().map_or(0, Errno::code) }))
}

fn lock_response(outcome: Outcome) -> Answer<pb::LockResponse> {
    Ok(Response::new(match outcome {
        Ok(Reply::Locked { token }) => pb::LockResponse { errno: 0, fencing_token: token },
        Ok(other) => return Err(Status::internal(format!("unexpected reply {other:?}"))),
        Err(e) => pb::LockResponse { errno: e.code(), fencing_token: 0 },
    }))
}

fn chunk_response(api: &MetaApi, outcome: Outcome, chunk_size_bytes: u64) -> Answer<pb::ChunkResponse> {
    Ok(Response::new(match outcome {
        Ok(Reply::Chunk { index, chunk }) => pb::ChunkResponse {
            errno: 0,
            chunk: Some(convert::chunk_entry(index, &chunk, |s| api.chunks.registry().is_live(s))),
            chunk_size_bytes,
        },
        Ok(other) => return Err(Status::internal(format!("unexpected reply {other:?}"))),
        Err(e) => pb::ChunkResponse { errno: e.code(), chunk: None, chunk_size_bytes },
    }))
}

fn einval_lock() -> Answer<pb::LockResponse> {
    Ok(Response::new(pb::LockResponse { errno: Errno::Inval.code(), fencing_token: 0 }))
}

fn owner(session: u64, owner: u64) -> LockOwner {
    LockOwner { session: SessionId(session), owner }
}

fn session(id: u64) -> Option<SessionId> {
    (id != 0).then_some(SessionId(id))
}

impl MetaApi {
    /// Where a new chunk goes, chosen by the proposing node from its registry view (so `apply`
    /// stays deterministic): empty before the filesystem is formatted or with no live
    /// chunkserver; UNAVAILABLE before the registry was read.
    fn placement(&self) -> Result<Vec<Replica>, Status> {
        let Some(p) = self.node.fs_params_local() else { return Ok(Vec::new()) };
        let Some(servers) = self.chunks.registry().live() else {
            return Err(Status::unavailable("the chunkserver registry has not been read yet"));
        };
        let placed = place(&servers, &[], &[], p.replication_factor as usize, p.chunk_size_bytes);
        if placed.len() < p.replication_factor as usize {
            self.log_no_room(servers.len(), placed.len(), p.replication_factor);
        }
        Ok(placed)
    }

    /// Clients only see ENOSPC (or an under-replicated new chunk): tell the operator why.
    fn log_no_room(&self, live: usize, placed: usize, replication_factor: u32) {
        let mut logged = self.no_room_logged.lock().unwrap_or_else(|p| p.into_inner());
        if logged.is_some_and(|at| at.elapsed() < SPACE_WARN_INTERVAL) {
            return;
        }
        *logged = Some(Instant::now());
        tracing::warn!(
            live,
            placed,
            replication_factor,
            "too few live chunkservers with a chunk's worth of free space for a new chunk"
        );
    }

    /// The chunk size of the filesystem (0 before it is formatted); it never changes once set.
    fn chunk_size_bytes(&self) -> u64 {
        self.node.fs_params_local().map_or(0, |p| p.chunk_size_bytes)
    }

    /// After a change that may have cut a chunk (truncating setattr, O_TRUNC), has the leader
    /// carry out the pending truncations now, so the chunk is usable again when the call
    /// returns. Best effort: the leader's background work does it otherwise.
    async fn flush_truncates(&self, ino: u64) {
        let call =
            self.node.leader_call("flush_truncates", RPC_FLUSH_TRUNCATES, ino.to_be_bytes().to_vec(), REQUEST_TIMEOUT);
        if let Err(e) = call.await {
            tracing::debug!(inode = ino, error = %e, "flushing truncations; left to the leader's background work");
        }
    }

    /// Directory `dir`'s attributes read after a change of it succeeded, for the answer (the
    /// client then needs no GetAttr for the kernel's next look at the directory); none when
    /// the change failed or the read does.
    async fn dir_attr_after(&self, outcome: &Outcome, dir: u64) -> Option<pb::Attr> {
        if outcome.is_err() {
            return None;
        }
        // Counted apart from clients' GetAttr calls, which this replaces.
        match self.node.read("parent_attr", |s| read::getattr(s, InodeId(dir))).await {
            Ok(Ok(inode)) => Some(attr(&inode)),
            _ => None,
        }
    }

    /// `inode`'s attributes with its allocated bytes (for `st_blocks`), read after a change.
    /// Only non-empty regular files need the read; without it (or when it fails) the answer
    /// leaves the figure out and the client estimates it from the size.
    async fn attr_after(&self, inode: &Inode) -> pb::Attr {
        if inode.kind != FileKind::Regular || inode.size == 0 {
            return convert::attr_allocated(inode, 0);
        }
        match self.node.read("allocation", |s| chunk_map::allocated_bytes(s, inode)).await {
            Ok(Ok(bytes)) => convert::attr_allocated(inode, bytes),
            _ => attr(inode),
        }
    }

    /// The answer to a change that returns the changed inode's attributes.
    async fn attr_response(&self, outcome: Outcome) -> Answer<pb::AttrResponse> {
        Ok(Response::new(match outcome {
            Ok(Reply::Attr(i)) | Ok(Reply::Created { attr: i, .. }) => {
                pb::AttrResponse { errno: 0, attr: Some(self.attr_after(&i).await) }
            }
            Ok(other) => return Err(Status::internal(format!("unexpected reply {other:?}"))),
            Err(e) => pb::AttrResponse { errno: e.code(), attr: None },
        }))
    }

    /// The answer to a call that added an entry to `parent`.
    async fn entry_response(&self, outcome: Outcome, parent: u64) -> Answer<pb::EntryResponse> {
        let parent_attr = self.dir_attr_after(&outcome, parent).await;
        let r = self.attr_response(outcome).await?.into_inner();
        Ok(Response::new(pb::EntryResponse { errno: r.errno, attr: r.attr, parent_attr }))
    }

    /// The answer to a call that removed an entry from `parent`.
    async fn remove_response(&self, outcome: Outcome, parent: u64) -> Answer<pb::RemoveResponse> {
        let parent_attr = self.dir_attr_after(&outcome, parent).await;
        Ok(Response::new(pb::RemoveResponse { errno: outcome.err().map_or(0, Errno::code), parent_attr }))
    }

    /// Proposes `op`, applied once per client request when the call carries a request id.
    async fn change(
        &self,
        once: Option<RequestId>,
        cred: Option<pb::Credentials>,
        t: Option<pb::Timespec>,
        op: Op,
    ) -> Result<Outcome, Status> {
        let caller = caller(cred)?;
        let time = time(t)?;
        let op = match once {
            Some(request) => Op::Once { request, op: Box::new(op) },
            None => op,
        };
        self.node.change(caller, time, op).await.map_err(status)
    }
}

#[tonic::async_trait]
impl MetaService for MetaApi {
    async fn format(&self, request: Request<pb::FormatRequest>) -> Answer<pb::FormatResponse> {
        let (once, r) = (request_id(request.metadata()), request.into_inner());
        let op = Op::Format { chunk_size_bytes: r.chunk_size_bytes, replication_factor: r.replication_factor };
        let outcome = self.change(once, r.cred, r.time, op).await?;
        Ok(Response::new(match outcome {
            Ok(Reply::Formatted(p)) => pb::FormatResponse {
                errno: 0,
                chunk_size_bytes: p.chunk_size_bytes,
                replication_factor: p.replication_factor,
                created: Some(convert::timespec(p.created)),
                fs_generation: p.fs_generation,
            },
            Ok(other) => return Err(Status::internal(format!("unexpected reply {other:?}"))),
            Err(e) => pb::FormatResponse { errno: e.code(), ..Default::default() },
        }))
    }

    async fn get_attr(&self, request: Request<pb::GetAttrRequest>) -> Answer<pb::AttrResponse> {
        let r = request.into_inner();
        caller(r.cred)?;
        let result = self
            .node
            .read("getattr", |s| read::getattr(s, InodeId(r.ino)).and_then(|i| read::with_allocation(s, i)))
            .await
            .map_err(status)?;
        Ok(Response::new(read_attr_response(result)))
    }

    async fn lookup(&self, request: Request<pb::LookupRequest>) -> Answer<pb::AttrResponse> {
        let r = request.into_inner();
        let c = caller(r.cred)?;
        let result = self
            .node
            .read("lookup", |s| {
                read::lookup(s, &c, InodeId(r.parent), &r.name).and_then(|i| read::with_allocation(s, i))
            })
            .await
            .map_err(status)?;
        Ok(Response::new(read_attr_response(result)))
    }

    async fn access(&self, request: Request<pb::AccessRequest>) -> Answer<pb::ErrnoResponse> {
        let r = request.into_inner();
        let c = caller(r.cred)?;
        let result = self.node.read("access", |s| read::access(s, &c, InodeId(r.ino), r.mask)).await.map_err(status)?;
        errno_response(result.map(|()| Reply::Done))
    }

    async fn mknod(&self, request: Request<pb::MknodRequest>) -> Answer<pb::EntryResponse> {
        let (once, r) = (request_id(request.metadata()), request.into_inner());
        let kind = convert::file_kind(r.r#type)?;
        let op =
            Op::Mknod { parent: InodeId(r.parent), name: r.name, kind, mode: r.mode, umask: r.umask, rdev: r.rdev };
        self.entry_response(self.change(once, r.cred, r.time, op).await?, r.parent).await
    }

    async fn mkdir(&self, request: Request<pb::MkdirRequest>) -> Answer<pb::EntryResponse> {
        let (once, r) = (request_id(request.metadata()), request.into_inner());
        let op = Op::Mkdir { parent: InodeId(r.parent), name: r.name, mode: r.mode, umask: r.umask };
        self.entry_response(self.change(once, r.cred, r.time, op).await?, r.parent).await
    }

    async fn create(&self, request: Request<pb::CreateRequest>) -> Answer<pb::CreateResponse> {
        let (once, r) = (request_id(request.metadata()), request.into_inner());
        let flags = convert::open_flags(r.open);
        let (parent, name, mode, umask, exclusive) = (InodeId(r.parent), r.name, r.mode, r.umask, r.exclusive);
        let with_chunk = r.allocate_first_chunk && r.session != 0 && (flags.write || flags.truncate);
        let op = if with_chunk {
            // Placement is chosen here, before proposing, as for AllocateChunk. Without a live
            // chunkserver (or before the registry was read) the file is created without the
            // chunk: the writer allocates it later.
            let placement = self.placement().unwrap_or_default();
            Op::CreateWithChunk {
                parent,
                name,
                mode,
                umask,
                exclusive,
                session: SessionId(r.session),
                flags,
                placement,
            }
        } else {
            Op::Create { parent, name, mode, umask, exclusive, session: session(r.session), flags }
        };
        let outcome = self.change(once, r.cred, r.time, op).await?;
        let created_ino = match &outcome {
            Ok(
                Reply::Created { attr: a, .. }
                | Reply::CreatedWithChunk { attr: a, .. }
                | Reply::CreatedWithChunkIn { attr: a, .. },
            ) => Some(a.ino.0),
            _ => None,
        };
        if let (true, Some(ino)) = (flags.truncate, created_ino) {
            self.flush_truncates(ino).await;
        }
        let live = |s| self.chunks.registry().is_live(s);
        // The three create replies (older ones recorded for retries still decode) as one.
        let (a, created, first_chunk, parent) = match outcome {
            Ok(Reply::Created { attr, created }) => (attr, created, None, None),
            Ok(Reply::CreatedWithChunk { attr, created, first_chunk }) => (attr, created, first_chunk, None),
            Ok(Reply::CreatedWithChunkIn { attr, created, first_chunk, parent }) => {
                (attr, created, first_chunk, parent)
            }
            Ok(other) => return Err(Status::internal(format!("unexpected reply {other:?}"))),
            Err(e) => return Ok(Response::new(pb::CreateResponse { errno: e.code(), ..Default::default() })),
        };
        Ok(Response::new(pb::CreateResponse {
            errno: 0,
            // Not created (O_CREAT of an existing file): it may hold data.
            attr: Some(self.attr_after(&a).await),
            created,
            first_chunk: first_chunk.map(|c| convert::chunk_entry(0, &c, live)),
            parent_attr: parent.map(|p| attr(&p)),
        }))
    }

    async fn open(&self, request: Request<pb::OpenRequest>) -> Answer<pb::AttrResponse> {
        let (once, r) = (request_id(request.metadata()), request.into_inner());
        let flags = convert::open_flags(r.open);
        let op = Op::Open { ino: InodeId(r.ino), session: SessionId(r.session), flags };
        let outcome = self.change(once, r.cred, r.time, op).await?;
        if flags.truncate && outcome.is_ok() {
            self.flush_truncates(r.ino).await;
        }
        self.attr_response(outcome).await
    }

    async fn close(&self, request: Request<pb::CloseRequest>) -> Answer<pb::ErrnoResponse> {
        let (once, r) = (request_id(request.metadata()), request.into_inner());
        let (ino, session) = (InodeId(r.ino), SessionId(r.session));
        let op = match r.open {
            Some(m) => Op::CloseHandle { ino, session, write: m.write || m.truncate },
            None => Op::Close { ino, session },
        };
        errno_response(self.change(once, r.cred, r.time, op).await?)
    }

    async fn close_many(&self, request: Request<pb::CloseManyRequest>) -> Answer<pb::ErrnoResponse> {
        let (once, r) = (request_id(request.metadata()), request.into_inner());
        if r.handles.len() > CLOSE_MANY_HANDLES_MAX {
            return Err(Status::invalid_argument(format!(
                "{} handles in one CloseMany; at most {CLOSE_MANY_HANDLES_MAX}",
                r.handles.len()
            )));
        }
        let handles =
            r.handles.iter().map(|h| (InodeId(h.ino), h.open.is_some_and(|m| m.write || m.truncate))).collect();
        let op = Op::CloseHandles { session: SessionId(r.session), handles };
        errno_response(self.change(once, r.cred, r.time, op).await?)
    }

    async fn unlink(&self, request: Request<pb::RemoveRequest>) -> Answer<pb::RemoveResponse> {
        let (once, r) = (request_id(request.metadata()), request.into_inner());
        let op = Op::Unlink { parent: InodeId(r.parent), name: r.name };
        self.remove_response(self.change(once, r.cred, r.time, op).await?, r.parent).await
    }

    async fn rmdir(&self, request: Request<pb::RemoveRequest>) -> Answer<pb::RemoveResponse> {
        let (once, r) = (request_id(request.metadata()), request.into_inner());
        let op = Op::Rmdir { parent: InodeId(r.parent), name: r.name };
        self.remove_response(self.change(once, r.cred, r.time, op).await?, r.parent).await
    }

    async fn link(&self, request: Request<pb::LinkRequest>) -> Answer<pb::EntryResponse> {
        let (once, r) = (request_id(request.metadata()), request.into_inner());
        let op = Op::Link { ino: InodeId(r.ino), new_parent: InodeId(r.new_parent), new_name: r.new_name };
        self.entry_response(self.change(once, r.cred, r.time, op).await?, r.new_parent).await
    }

    async fn symlink(&self, request: Request<pb::SymlinkRequest>) -> Answer<pb::EntryResponse> {
        let (once, r) = (request_id(request.metadata()), request.into_inner());
        let op = Op::Symlink { parent: InodeId(r.parent), name: r.name, target: r.target };
        self.entry_response(self.change(once, r.cred, r.time, op).await?, r.parent).await
    }

    async fn readlink(&self, request: Request<pb::ReadlinkRequest>) -> Answer<pb::ReadlinkResponse> {
        let r = request.into_inner();
        caller(r.cred)?;
        let result = self.node.read("readlink", |s| read::readlink(s, InodeId(r.ino))).await.map_err(status)?;
        Ok(Response::new(match result {
            Ok(target) => pb::ReadlinkResponse { errno: 0, target },
            Err(e) => pb::ReadlinkResponse { errno: e.code(), target: Vec::new() },
        }))
    }

    async fn rename(&self, request: Request<pb::RenameRequest>) -> Answer<pb::RenameResponse> {
        let (once, r) = (request_id(request.metadata()), request.into_inner());
        let op = Op::Rename {
            parent: InodeId(r.parent),
            name: r.name,
            new_parent: InodeId(r.new_parent),
            new_name: r.new_name,
            flags: convert::rename_flags(r.flags),
        };
        let outcome = self.change(once, r.cred, r.time, op).await?;
        let parent_attr = self.dir_attr_after(&outcome, r.parent).await;
        let new_parent_attr =
            if r.new_parent == r.parent { None } else { self.dir_attr_after(&outcome, r.new_parent).await };
        Ok(Response::new(pb::RenameResponse {
            errno: outcome.err().map_or(0, Errno::code),
            parent_attr,
            new_parent_attr,
        }))
    }

    async fn set_attr(&self, request: Request<pb::SetAttrRequest>) -> Answer<pb::AttrResponse> {
        let (once, r) = (request_id(request.metadata()), request.into_inner());
        let attr = SetAttr {
            mode: r.mode,
            uid: r.uid,
            gid: r.gid,
            size: r.size,
            atime: convert::time_set(r.atime)?,
            mtime: convert::time_set(r.mtime)?,
            through_write_handle: r.through_write_handle,
        };
        let resizes = attr.size.is_some();
        let outcome = self.change(once, r.cred, r.time, Op::SetAttr { ino: InodeId(r.ino), attr }).await?;
        if resizes && outcome.is_ok() {
            self.flush_truncates(r.ino).await;
        }
        self.attr_response(outcome).await
    }

    async fn set_xattr(&self, request: Request<pb::SetXattrRequest>) -> Answer<pb::ErrnoResponse> {
        let (once, r) = (request_id(request.metadata()), request.into_inner());
        let Some(mode) = convert::xattr_mode(r.flags) else {
            return Ok(Response::new(pb::ErrnoResponse { errno: Errno::Inval.code() }));
        };
        let op = Op::SetXattr { ino: InodeId(r.ino), name: r.name, value: r.value, mode };
        errno_response(self.change(once, r.cred, r.time, op).await?)
    }

    async fn get_xattr(&self, request: Request<pb::GetXattrRequest>) -> Answer<pb::GetXattrResponse> {
        let r = request.into_inner();
        let c = caller(r.cred)?;
        let result =
            self.node.read("getxattr", |s| read::getxattr(s, &c, InodeId(r.ino), &r.name)).await.map_err(status)?;
        Ok(Response::new(match result {
            Ok(value) => pb::GetXattrResponse { errno: 0, value },
            Err(e) => pb::GetXattrResponse { errno: e.code(), value: Vec::new() },
        }))
    }

    async fn list_xattr(&self, request: Request<pb::ListXattrRequest>) -> Answer<pb::ListXattrResponse> {
        let r = request.into_inner();
        let c = caller(r.cred)?;
        let result = self.node.read("listxattr", |s| read::listxattr(s, &c, InodeId(r.ino))).await.map_err(status)?;
        Ok(Response::new(match result {
            Ok(names) => pb::ListXattrResponse { errno: 0, names },
            Err(e) => pb::ListXattrResponse { errno: e.code(), names: Vec::new() },
        }))
    }

    async fn remove_xattr(&self, request: Request<pb::RemoveXattrRequest>) -> Answer<pb::ErrnoResponse> {
        let (once, r) = (request_id(request.metadata()), request.into_inner());
        let op = Op::RemoveXattr { ino: InodeId(r.ino), name: r.name };
        errno_response(self.change(once, r.cred, r.time, op).await?)
    }

    async fn read_dir(&self, request: Request<pb::ReadDirRequest>) -> Answer<pb::ReadDirResponse> {
        let r = request.into_inner();
        let c = caller(r.cred)?;
        let result = self
            .node
            .read("readdir", |s| read::readdir(s, &c, InodeId(r.ino), r.cookie, r.limit, r.plus))
            .await
            .map_err(status)?;
        Ok(Response::new(match result {
            Ok(page) => pb::ReadDirResponse {
                errno: 0,
                entries: page
                    .entries
                    .into_iter()
                    .map(|e| pb::DirEntry {
                        name: e.name,
                        ino: e.ino.0,
                        r#type: convert::file_type(e.kind) as i32,
                        cookie: e.cookie,
                        attr: e.attr.as_ref().map(|(i, allocated)| convert::attr_allocated(i, *allocated)),
                    })
                    .collect(),
                eof: page.eof,
            },
            Err(e) => pb::ReadDirResponse { errno: e.code(), entries: Vec::new(), eof: false },
        }))
    }

    async fn stat_fs(&self, request: Request<pb::StatFsRequest>) -> Answer<pb::StatFsResponse> {
        let r = request.into_inner();
        caller(r.cred)?;
        let result = self.node.read("statfs", read::statfs).await.map_err(status)?;
        let servers = self.chunks.registry().live().unwrap_or_default();
        let capacity: u64 = servers.iter().map(|s| s.capacity_bytes).fold(0, u64::saturating_add);
        let free: u64 = servers.iter().map(|s| s.free_bytes).fold(0, u64::saturating_add);
        Ok(Response::new(match result {
            Ok(s) => pb::StatFsResponse {
                chunkserver_capacity_bytes: capacity,
                chunkserver_free_bytes: free,
                errno: 0,
                chunk_size_bytes: s.params.chunk_size_bytes,
                replication_factor: s.params.replication_factor,
                inodes_used: s.usage.inodes,
                bytes_used: s.usage.bytes,
                name_bytes_max: s.name_bytes_max,
                fs_generation: s.params.fs_generation,
            },
            Err(e) => pb::StatFsResponse { errno: e.code(), ..Default::default() },
        }))
    }

    async fn open_session(&self, request: Request<pb::OpenSessionRequest>) -> Answer<pb::OpenSessionResponse> {
        let (once, r) = (request_id(request.metadata()), request.into_inner());
        let op = Op::OpenSession { client_name: r.client_name, host: r.host, pid: r.pid, ttl_ms: r.ttl_ms };
        Ok(Response::new(match self.change(once, r.cred, r.time, op).await? {
            Ok(Reply::Session { id, ttl_ms }) => pb::OpenSessionResponse { errno: 0, session: id.0, ttl_ms },
            Ok(other) => return Err(Status::internal(format!("unexpected reply {other:?}"))),
            Err(e) => pb::OpenSessionResponse { errno: e.code(), ..Default::default() },
        }))
    }

    async fn heartbeat(&self, request: Request<pb::HeartbeatRequest>) -> Answer<pb::HeartbeatResponse> {
        let r = request.into_inner();
        Ok(Response::new(match self.node.heartbeat(SessionId(r.session)).await.map_err(status)? {
            Some(ttl) => pb::HeartbeatResponse { errno: 0, ttl_ms: ttl.as_millis() as u64 },
            None => pb::HeartbeatResponse { errno: Errno::BadF.code(), ttl_ms: 0 },
        }))
    }

    async fn close_session(&self, request: Request<pb::CloseSessionRequest>) -> Answer<pb::ErrnoResponse> {
        let (once, r) = (request_id(request.metadata()), request.into_inner());
        errno_response(self.change(once, r.cred, r.time, Op::CloseSession { session: SessionId(r.session) }).await?)
    }

    async fn get_lock(&self, request: Request<pb::GetLockRequest>) -> Answer<pb::GetLockResponse> {
        let r = request.into_inner();
        caller(r.cred)?;
        let Some(kind) = convert::lock_kind(r.r#type) else {
            return Ok(Response::new(pb::GetLockResponse { errno: Errno::Inval.code(), conflict: None }));
        };
        let who = owner(r.session, r.owner);
        let result = self
            .node
            .read("getlk", |s| locks::get_lock(s, InodeId(r.ino), who, kind, r.start, r.len))
            .await
            .map_err(status)?;
        Ok(Response::new(match result {
            Ok(conflict) => pb::GetLockResponse { errno: 0, conflict: conflict.as_ref().map(convert::lock) },
            Err(e) => pb::GetLockResponse { errno: e.code(), conflict: None },
        }))
    }

    async fn set_lock(&self, request: Request<pb::SetLockRequest>) -> Answer<pb::LockResponse> {
        let r = request.into_inner();
        let c = caller(r.cred)?;
        let t = time(r.time)?;
        let Some(kind) = convert::lock_kind(r.r#type) else { return einval_lock() };
        let op = Op::SetLock {
            ino: InodeId(r.ino),
            owner: owner(r.session, r.owner),
            pid: r.pid,
            kind,
            start: r.start,
            len: r.len,
        };
        let wait = r.wait && kind != LockKind::Unlock;
        lock_response(self.node.lock(c, t, op, wait).await.map_err(status)?)
    }

    async fn flock(&self, request: Request<pb::FlockRequest>) -> Answer<pb::LockResponse> {
        let r = request.into_inner();
        let c = caller(r.cred)?;
        let t = time(r.time)?;
        let Some(kind) = convert::lock_kind(r.r#type) else { return einval_lock() };
        let op = Op::Flock { ino: InodeId(r.ino), owner: owner(r.session, r.owner), pid: r.pid, kind };
        let wait = r.wait && kind != LockKind::Unlock;
        lock_response(self.node.lock(c, t, op, wait).await.map_err(status)?)
    }

    async fn release_owner(&self, request: Request<pb::ReleaseOwnerRequest>) -> Answer<pb::ErrnoResponse> {
        let (once, r) = (request_id(request.metadata()), request.into_inner());
        let op =
            Op::ReleaseOwner { ino: InodeId(r.ino), owner: owner(r.session, r.owner), posix: r.posix, flock: r.flock };
        errno_response(self.change(once, r.cred, r.time, op).await?)
    }

    async fn get_chunks(&self, request: Request<pb::GetChunksRequest>) -> Answer<pb::GetChunksResponse> {
        let r = request.into_inner();
        caller(r.cred)?;
        let result = self
            .node
            .read("get_chunks", |s| chunk_map::chunk_map(s, InodeId(r.ino), r.first_index, r.count))
            .await
            .map_err(status)?;
        Ok(Response::new(match result {
            Ok(m) => pb::GetChunksResponse {
                errno: 0,
                chunk_size_bytes: m.chunk_size_bytes,
                size: m.size,
                chunks: m
                    .chunks
                    .iter()
                    .map(|(index, c)| convert::chunk_entry(*index, c, |s| self.chunks.registry().is_live(s)))
                    .collect(),
            },
            Err(e) => pb::GetChunksResponse { errno: e.code(), ..Default::default() },
        }))
    }

    async fn allocate_chunk(&self, request: Request<pb::AllocateChunkRequest>) -> Answer<pb::ChunkResponse> {
        let (once, r) = (request_id(request.metadata()), request.into_inner());
        // Placement is chosen here, before proposing, so `apply` stays deterministic.
        let placement = self.placement()?;
        let op = Op::AllocateChunk { ino: InodeId(r.ino), session: SessionId(r.session), index: r.index, placement };
        let outcome = self.change(once, r.cred, r.time, op).await?;
        chunk_response(self, outcome, self.chunk_size_bytes())
    }

    async fn report_chunk_failure(&self, request: Request<pb::ReportChunkFailureRequest>) -> Answer<pb::ChunkResponse> {
        let r = request.into_inner();
        let report = FailureReport {
            caller: caller(r.cred)?,
            now: time(r.time)?.unwrap_or_else(Timespec::now),
            ino: InodeId(r.ino),
            session: SessionId(r.session),
            index: r.index,
            chunk: ChunkId(r.chunk_id),
            version: r.version,
            failed_addresses: r.failed_addresses,
            corrupt: r.corrupt,
        };
        let body = bincode::serialize(&report).map_err(|e| Status::internal(e.to_string()))?;
        let answer = self
            .node
            .leader_call("report_chunk_failure", RPC_REPORT_FAILURE, body, REQUEST_TIMEOUT)
            .await
            .map_err(status)?;
        let outcome = decode_outcome(&answer).map_err(|e| Status::internal(format!("undecodable outcome: {e}")))?;
        chunk_response(self, outcome, self.chunk_size_bytes())
    }

    async fn commit_write(&self, request: Request<pb::CommitWriteRequest>) -> Answer<pb::AttrResponse> {
        let (once, r) = (request_id(request.metadata()), request.into_inner());
        let (ino, session) = (InodeId(r.ino), SessionId(r.session));
        let op = match r.then_set {
            None => Op::CommitWrite { ino, session, size: r.size, chunk_indexes: r.chunk_indexes },
            Some(change) => {
                let attr = SetAttr {
                    mode: change.mode,
                    uid: change.uid,
                    gid: change.gid,
                    size: None,
                    atime: convert::time_set(change.atime)?,
                    mtime: convert::time_set(change.mtime)?,
                    through_write_handle: false,
                };
                Op::CommitWriteSetAttr { ino, session, size: r.size, chunk_indexes: r.chunk_indexes, attr }
            }
        };
        self.attr_response(self.change(once, r.cred, r.time, op).await?).await
    }

    async fn fsck(&self, request: Request<pb::FsckRequest>) -> Answer<pb::FsckResponse> {
        let r = request.into_inner();
        let answer = self
            .node
            .leader_call("fsck", RPC_FSCK, r.limit.to_be_bytes().to_vec(), REQUEST_TIMEOUT)
            .await
            .map_err(status)?;
        let report: FsckReport =
            bincode::deserialize(&answer).map_err(|e| Status::internal(format!("undecodable fsck answer: {e}")))?;
        Ok(Response::new(convert::fsck(&report)))
    }

    async fn digest(&self, _request: Request<pb::DigestRequest>) -> Answer<pb::DigestResponse> {
        let d = self.node.local_digest().map_err(status)?;
        Ok(Response::new(pb::DigestResponse {
            digest: d.digest.to_vec(),
            rows: d.rows,
            applied_index: d.applied_index,
            node_id: self.node.rsm().node_id(),
        }))
    }
}
