//! The gRPC codec of every generated service: prost's, except that an outgoing message's buffer
//! space is reserved whole before it is encoded.
//!
//! tonic encodes a stream's messages into one buffer whose earlier messages are still in flight,
//! so the buffer grows by exactly what each write needs. prost writes a message's fields in tag
//! order, and a chunk message's `data` (1 MiB) comes before its `crc32`: the CRC's first byte
//! found the buffer full and reallocated it, copying the whole megabyte again. That copy was
//! ~5 % of a chunkserver's CPU in a sequential read (perf, 2026-11-27), and every hop of a chain
//! write paid it too.
//!
//! Every RPC of every service goes through it, so every multi-process test exercises it (tonic
//! offers no public way to build an `EncodeBuf` for a unit test).

use std::marker::PhantomData;

use prost::Message;
use tonic::codec::{BufferSettings, Codec, EncodeBuf, Encoder};
use tonic::Status;
use tonic_prost::ProstDecoder;

/// A [`Codec`] for prost messages that reserves each message's encoded length first.
#[derive(Debug, Clone)]
pub struct ReservingCodec<T, U>(PhantomData<(T, U)>);

impl<T, U> Default for ReservingCodec<T, U> {
    fn default() -> Self {
        Self(PhantomData)
    }
}

impl<T, U> Codec for ReservingCodec<T, U>
where
    T: Message + Send + 'static,
    U: Message + Default + Send + 'static,
{
    type Encode = T;
    type Decode = U;
    type Encoder = ReservingEncoder<T>;
    type Decoder = ProstDecoder<U>;

    fn encoder(&mut self) -> Self::Encoder {
        ReservingEncoder(PhantomData)
    }

    fn decoder(&mut self) -> Self::Decoder {
        ProstDecoder::new(BufferSettings::default())
    }
}

/// Encodes a prost message into space reserved for all of it.
#[derive(Debug, Clone)]
pub struct ReservingEncoder<T>(PhantomData<T>);

impl<T: Message> Encoder for ReservingEncoder<T> {
    type Item = T;
    type Error = Status;

    fn encode(&mut self, item: T, buf: &mut EncodeBuf<'_>) -> Result<(), Status> {
        buf.reserve(item.encoded_len());
        item.encode(buf).map_err(|e| Status::internal(format!("encoding a message: {e}")))
    }
}
