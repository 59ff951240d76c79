//! Every deadline and bound the fixtures use, in one place.
//!
//! These are deadlines, not expectations: a healthy cluster meets each of them with a wide
//! margin even on a loaded 2-core machine running two multi-process tests at once. A test that
//! hits one has found a hang (or a server that is far too slow), and says what it waited for.

use std::time::Duration;

/// How long a fresh or restarted cluster may take until every node answers `/health`.
pub const CLUSTER_READY_TIMEOUT: Duration = Duration::from_secs(60);

/// How long until some node names a (new) leader.
pub const LEADER_TIMEOUT: Duration = Duration::from_secs(30);

/// Default deadline of [`crate::poll_until`] users that wait for replication or expiry.
pub const CONVERGE_TIMEOUT: Duration = Duration::from_secs(30);

/// Pause between two checks of a polled condition.
pub const POLL_INTERVAL: Duration = Duration::from_millis(50);

/// Deadline for one HTTP request to a node's `/status`.
pub const HTTP_REQUEST_TIMEOUT: Duration = Duration::from_secs(2);

/// etcd-client: deadline for connecting, and for each request.
pub const CLIENT_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
pub const CLIENT_REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// etcdctl's own deadlines, passed as `--dial-timeout` and `--command-timeout`.
pub const ETCDCTL_DIAL_TIMEOUT: &str = "5s";
pub const ETCDCTL_COMMAND_TIMEOUT: &str = "10s";

/// Deadline for a one-shot etcdctl process, from spawn to exit (above its command timeout).
pub const ETCDCTL_RUN_TIMEOUT: Duration = Duration::from_secs(30);

/// Deadline for the next stdout line of a long-running etcdctl child, and for its exit.
pub const ETCDCTL_LINE_TIMEOUT: Duration = Duration::from_secs(20);

/// Deadline for the next response on an etcd-client stream (watch, lease keep-alive).
pub const STREAM_MESSAGE_TIMEOUT: Duration = Duration::from_secs(20);

/// Stdout lines of an etcdctl child buffered until the test reads them; beyond this the
/// reader (and then etcdctl itself, on a full pipe) waits.
pub const ETCDCTL_CHILD_LINES_MAX: usize = 4096;

/// Stderr bytes of an etcdctl child kept for failure messages; the rest is dropped.
pub const ETCDCTL_STDERR_BYTES_MAX: usize = 64 * 1024;

/// Deadline of one shell script run by [`crate::sh`] against a mount (cp -r of a source tree,
/// a git commit, ...).
pub const SHELL_TIMEOUT: Duration = Duration::from_secs(300);
/// After a timed-out script's process group is SIGKILLed, how long to wait for its exit and
/// output before abandoning processes stuck in unanswered FUSE requests.
pub const SHELL_KILL_GRACE: Duration = Duration::from_secs(5);
/// How often a running script is checked for its exit.
pub const SHELL_POLL_INTERVAL: Duration = Duration::from_millis(20);

/// Unexpected server log lines quoted in a [`crate::TestCluster::finish`] failure.
pub const LOG_LINES_QUOTED_MAX: usize = 40;

/// The metaserver tests' group ([`crate::meta::MetaCluster`]): start-up (3 coordinators, then 3
/// metaservers), convergence (leader, identical digests), and one gRPC call.
pub const META_READY_TIMEOUT: Duration = Duration::from_secs(120);
pub const META_CONVERGE_TIMEOUT: Duration = Duration::from_secs(60);
pub const META_RPC_TIMEOUT: Duration = Duration::from_secs(15);
