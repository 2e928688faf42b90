//! An IO adapter that fails a read or a write that makes no progress for a set time.
//!
//! Every `poll_read` (and every `poll_write`/`poll_flush`/`poll_shutdown`)
//! that returns `Pending` arms a deadline; any progress disarms it; if the
//! deadline passes first the call fails with `TimedOut` and the connection is
//! dropped. This bounds a stalled peer in every phase after the handshake,
//! including an idle keep-alive connection (which is closed after the same
//! time) and a peer that stops reading our response.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};

struct Deadline {
    timeout: Duration,
    sleep: Pin<Box<Sleep>>,
    armed: bool,
}

impl Deadline {
    fn new(timeout: Duration) -> Deadline {
        Deadline { timeout, sleep: Box::pin(tokio::time::sleep(timeout)), armed: false }
    }

    /// The inner IO returned `Pending`: arm if needed, and fail once the deadline has passed.
    fn pending(&mut self, cx: &mut Context<'_>) -> Poll<io::Error> {
        if !self.armed {
            self.sleep.as_mut().reset(Instant::now() + self.timeout);
            self.armed = true;
        }
        match self.sleep.as_mut().poll(cx) {
            Poll::Ready(()) => {
                self.armed = false;
                Poll::Ready(io::Error::new(io::ErrorKind::TimedOut, "no progress within the I/O timeout"))
            }
            Poll::Pending => Poll::Pending,
        }
    }

    fn progress(&mut self) {
        self.armed = false;
    }
}

/// Wraps `S`, bounding every read and every write by `timeout` of no progress.
pub struct TimeoutIo<S> {
    inner: S,
    read: Deadline,
    write: Deadline,
}

impl<S> TimeoutIo<S> {
    pub fn new(inner: S, timeout: Duration) -> TimeoutIo<S> {
        TimeoutIo { inner, read: Deadline::new(timeout), write: Deadline::new(timeout) }
    }
}

fn after<T>(res: Poll<io::Result<T>>, d: &mut Deadline, cx: &mut Context<'_>) -> Poll<io::Result<T>> {
    match res {
        Poll::Ready(r) => {
            d.progress();
            Poll::Ready(r)
        }
        Poll::Pending => d.pending(cx).map(Err),
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for TimeoutIo<S> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        let res = Pin::new(&mut this.inner).poll_read(cx, buf);
        after(res, &mut this.read, cx)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for TimeoutIo<S> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        let res = Pin::new(&mut this.inner).poll_write(cx, buf);
        after(res, &mut this.write, cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        let res = Pin::new(&mut this.inner).poll_write_vectored(cx, bufs);
        after(res, &mut this.write, cx)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        let res = Pin::new(&mut this.inner).poll_flush(cx);
        after(res, &mut this.write, cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        let res = Pin::new(&mut this.inner).poll_shutdown(cx);
        after(res, &mut this.write, cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn stalled_read_times_out_and_progress_resets() {
        let (a, mut b) = tokio::io::duplex(64);
        let writer = tokio::spawn(async move {
            for _ in 0..2 {
                tokio::time::sleep(Duration::from_millis(200)).await;
                b.write_all(b"x").await.unwrap();
            }
            // Keep the pipe open, silent.
            tokio::time::sleep(Duration::from_secs(10)).await;
        });
        let mut io = TimeoutIo::new(a, Duration::from_millis(300));
        let mut buf = [0u8; 4];
        let start = Instant::now();
        // Reads that wait less than the timeout succeed, even when together they span more.
        for _ in 0..2 {
            assert_eq!(io.read(&mut buf).await.unwrap(), 1);
        }
        assert!(start.elapsed() >= Duration::from_millis(400));
        let err = io.read(&mut buf).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
        assert!(start.elapsed() >= Duration::from_millis(700), "{:?}", start.elapsed());
        writer.abort();
    }

    #[tokio::test]
    async fn stalled_write_times_out() {
        let (a, _b) = tokio::io::duplex(8);
        let mut io = TimeoutIo::new(a, Duration::from_millis(300));
        let err = io.write_all(&[0u8; 64]).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
    }
}
