//! The codec the generated server and client use: prost's, with encoder buffers sized for
//! streamed output.
//!
//! tonic's default encoder starts each stream's buffer at 8 KiB and only hands a frame to
//! HTTP/2 once 32 KiB have gathered or the stream has nothing ready. A follower of a busy job
//! always has its next chunk ready, so two 16 KiB chunks were copied into a buffer grown to
//! 64 KiB, which then stayed queued in HTTP/2 while the next one grew: about 100 KiB held per
//! stream, 150 MB for 1,000 followers. Here a buffer starts with room for one whole output
//! chunk and every message is handed over as soon as it is encoded.

use tonic::codec::{BufferSettings, Codec};
use tonic_prost::{ProstCodec, ProstDecoder, ProstEncoder};

/// The encoder's initial buffer: one `OutputChunk` of up to 8 KiB of data (jobd's chunk
/// size), its other fields and the 5-byte gRPC message header, with room to spare.
pub const ENCODE_BUFFER_BYTES: usize = 8 * 1024 + 128;

/// prost's codec with [`ENCODE_BUFFER_BYTES`] buffers and a frame per message.
#[derive(Debug, Clone)]
pub struct JobCodec<T, U> {
    inner: ProstCodec<T, U>,
}

impl<T, U> Default for JobCodec<T, U> {
    fn default() -> Self {
        JobCodec {
            inner: ProstCodec::default(),
        }
    }
}

impl<T, U> Codec for JobCodec<T, U>
where
    T: prost::Message + Send + 'static,
    U: prost::Message + Default + Send + 'static,
{
    type Encode = T;
    type Decode = U;
    type Encoder = ProstEncoder<T>;
    type Decoder = ProstDecoder<U>;

    fn encoder(&mut self) -> Self::Encoder {
        // A yield threshold of 1 byte: each message becomes a frame of its own at once.
        ProstCodec::<T, U>::raw_encoder(BufferSettings::new(ENCODE_BUFFER_BYTES, 1))
    }

    fn decoder(&mut self) -> Self::Decoder {
        self.inner.decoder()
    }
}
