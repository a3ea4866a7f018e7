//! NCHW tensors on the GPU, stored as f32 or f16 ([`Precision`]): allocation, upload and
//! download (f16 converted on the host both ways).

use ndarray::{Array4, ArrayView4};

use crate::error::{Error, Result};
use crate::gpu::context::{Gpu, block_on};
use crate::gpu::precision::{Precision, from_f16, to_f16};
use crate::spec::Shape;

/// Bytes moved per staging copy when uploading or downloading, so a 400 MB tensor does not need
/// a second 400 MB host-visible buffer.
const STAGING_BYTES: u64 = 64 << 20;

/// An NCHW tensor in one GPU buffer, of f32 elements or, with [`Precision::F16`], f16 ones.
///
/// The buffer may be larger than one storage binding; kernels bind windows of it.
pub struct GpuTensor {
    pub(crate) buffer: wgpu::Buffer,
    shape: Shape,
    precision: Precision,
}

impl GpuTensor {
    /// The tensor's shape.
    pub fn shape(&self) -> Shape {
        self.shape
    }

    /// The element type it is stored as.
    pub fn precision(&self) -> Precision {
        self.precision
    }

    /// The underlying buffer (`STORAGE | COPY_SRC | COPY_DST`).
    pub fn buffer(&self) -> &wgpu::Buffer {
        &self.buffer
    }

    /// Bytes the tensor occupies.
    pub fn bytes(&self) -> u64 {
        self.shape.len() as u64 * self.precision.bytes()
    }

    /// A tensor of `shape` over the start of `buffer`, sharing it (several tensors may take
    /// turns in one buffer); the buffer must be large enough.
    pub(crate) fn view(buffer: &wgpu::Buffer, shape: Shape) -> Result<Self> {
        if buffer.size() < shape.bytes() {
            return Err(Error::Internal(format!(
                "a tensor of {shape} does not fit a buffer of {} bytes",
                buffer.size()
            )));
        }
        Ok(Self {
            buffer: buffer.clone(),
            shape,
            precision: Precision::F32,
        })
    }
}

/// A window of a buffer bound to one storage binding: the byte range bound and the element
/// index, inside the window, where the wanted data starts (offsets must be aligned).
#[derive(Clone, Copy, Debug)]
pub(crate) struct Window {
    pub offset: u64,
    pub size: u64,
    pub base: u32,
}

impl Window {
    pub fn binding<'a>(&self, buffer: &'a wgpu::Buffer) -> wgpu::BindingResource<'a> {
        wgpu::BindingResource::Buffer(wgpu::BufferBinding {
            buffer,
            offset: self.offset,
            size: std::num::NonZeroU64::new(self.size),
        })
    }
}

impl Gpu {
    /// A window of `len` f32 elements starting at element `start` of `buffer`.
    pub(crate) fn window(&self, buffer: &wgpu::Buffer, start: usize, len: usize) -> Window {
        self.window_of(buffer, start, len, Precision::F32)
    }

    /// A window of `len` elements of `precision` starting at element `start` of `buffer`;
    /// its size is rounded up to whole 4-byte words (as bindings must be), within the buffer.
    pub(crate) fn window_of(
        &self,
        buffer: &wgpu::Buffer,
        start: usize,
        len: usize,
        precision: Precision,
    ) -> Window {
        let elem = precision.bytes();
        let align = self.limits().min_storage_buffer_offset_alignment as u64;
        let start_bytes = start as u64 * elem;
        let offset = start_bytes / align * align;
        let base = ((start_bytes - offset) / elem) as u32;
        let size = (buffer.size() - offset)
            .min(((base as u64 + len as u64) * elem).next_multiple_of(4))
            .max(4);
        Window { offset, size, base }
    }

    /// Allocates a buffer after checking it against the device's limits; allocation failures
    /// come back as [`Error::OutOfMemory`].
    pub(crate) fn create_buffer(
        &self,
        what: &str,
        bytes: u64,
        usage: wgpu::BufferUsages,
    ) -> Result<wgpu::Buffer> {
        let limit = self.limits().max_buffer_size;
        if bytes > limit {
            return Err(Error::ExceedsDeviceLimits {
                what: what.to_string(),
                bytes,
                limit_name: "max_buffer_size",
                limit,
            });
        }
        let size = bytes.max(4).next_multiple_of(4);
        self.scoped(what, bytes, || {
            self.device.create_buffer(&wgpu::BufferDescriptor {
                label: Some(what),
                size,
                usage,
                mapped_at_creation: false,
            })
        })
    }

    /// Writes f32 data into a buffer at an element offset, in bounded pieces.
    pub(crate) fn write_f32(
        &self,
        buffer: &wgpu::Buffer,
        start: usize,
        data: &[f32],
    ) -> Result<()> {
        let piece = (STAGING_BYTES / 4) as usize;
        for (i, chunk) in data.chunks(piece).enumerate() {
            let offset = (start + i * piece) as u64 * 4;
            self.scoped("writing to the GPU", chunk.len() as u64 * 4, || {
                self.queue
                    .write_buffer(buffer, offset, bytemuck::cast_slice(chunk));
            })?;
        }
        self.scoped("submitting writes", 0, || self.queue.submit([]))?;
        self.check_health()
    }

    /// Writes f32 data rounded to f16 into a buffer at an even element offset, in bounded
    /// pieces (an odd count is padded by one element, which the buffer's rounding to whole
    /// 4-byte words leaves room for at its end).
    pub(crate) fn write_f16(
        &self,
        buffer: &wgpu::Buffer,
        start: usize,
        data: &[f32],
    ) -> Result<()> {
        if !start.is_multiple_of(2) {
            return Err(Error::Internal(format!(
                "f16 write at the odd element offset {start}"
            )));
        }
        let piece = (STAGING_BYTES / 2) as usize;
        for (i, chunk) in data.chunks(piece).enumerate() {
            let mut half = to_f16(chunk);
            if !half.len().is_multiple_of(2) {
                half.push(half::f16::ZERO);
            }
            let offset = (start + i * piece) as u64 * 2;
            self.scoped("writing to the GPU", half.len() as u64 * 2, || {
                self.queue
                    .write_buffer(buffer, offset, bytemuck::cast_slice(&half));
            })?;
        }
        self.scoped("submitting writes", 0, || self.queue.submit([]))?;
        self.check_health()
    }

    /// Writes f32 data into a buffer of `precision` elements at an element offset (even for
    /// f16), rounding to f16 on the host where needed.
    pub(crate) fn write_as(
        &self,
        buffer: &wgpu::Buffer,
        start: usize,
        data: &[f32],
        precision: Precision,
    ) -> Result<()> {
        match precision {
            Precision::F32 => self.write_f32(buffer, start, data),
            Precision::F16 => self.write_f16(buffer, start, data),
        }
    }

    /// A storage buffer holding `data` as `precision` elements.
    pub(crate) fn storage_from_slice_as(
        &self,
        what: &str,
        data: &[f32],
        precision: Precision,
    ) -> Result<wgpu::Buffer> {
        let buffer = self.create_buffer(
            what,
            data.len() as u64 * precision.bytes(),
            wgpu::BufferUsages::STORAGE
                | wgpu::BufferUsages::COPY_DST
                | wgpu::BufferUsages::COPY_SRC,
        )?;
        self.write_as(&buffer, 0, data, precision)?;
        Ok(buffer)
    }

    /// Uploads an NCHW array (any batch size).
    pub fn upload(&self, array: ArrayView4<f32>) -> Result<GpuTensor> {
        self.upload_as(array, Precision::F32)
    }

    /// Uploads an NCHW array as `precision` elements (f16: rounded to nearest on the host).
    pub fn upload_as(&self, array: ArrayView4<f32>, precision: Precision) -> Result<GpuTensor> {
        let d = array.dim();
        let shape = Shape::new(d.0, d.1, d.2, d.3);
        shape.check_nonzero("upload")?;
        let tensor = self.empty_as(shape, precision)?;
        self.write_tensor(&tensor, array)?;
        Ok(tensor)
    }

    /// Overwrites a tensor with an array of its shape.
    pub fn write_tensor(&self, tensor: &GpuTensor, array: ArrayView4<f32>) -> Result<()> {
        let d = array.dim();
        if Shape::new(d.0, d.1, d.2, d.3) != tensor.shape {
            return Err(Error::ShapeMismatch {
                context: "tensor write".into(),
                left_name: "array",
                left: vec![d.0, d.1, d.2, d.3],
                right_name: "tensor",
                right: tensor.shape.dims().to_vec(),
            });
        }
        let p = tensor.precision;
        match array.as_slice() {
            Some(s) => self.write_as(&tensor.buffer, 0, s, p),
            None => self.write_as(
                &tensor.buffer,
                0,
                &array.iter().copied().collect::<Vec<_>>(),
                p,
            ),
        }
    }

    /// A tensor whose contents are undefined until written.
    pub fn empty(&self, shape: Shape) -> Result<GpuTensor> {
        self.empty_as(shape, Precision::F32)
    }

    /// A tensor of `precision` elements whose contents are undefined until written.
    pub fn empty_as(&self, shape: Shape, precision: Precision) -> Result<GpuTensor> {
        shape.check_nonzero("tensor")?;
        let buffer = self.create_buffer(
            &format!("tensor {shape} {precision}"),
            shape.len() as u64 * precision.bytes(),
            wgpu::BufferUsages::STORAGE
                | wgpu::BufferUsages::COPY_DST
                | wgpu::BufferUsages::COPY_SRC,
        )?;
        Ok(GpuTensor {
            buffer,
            shape,
            precision,
        })
    }

    /// A tensor with every element set to `value` (NaN poisons an output buffer so unwritten
    /// elements show).
    pub fn filled(&self, shape: Shape, value: f32) -> Result<GpuTensor> {
        self.filled_as(shape, value, Precision::F32)
    }

    /// [`Gpu::filled`] with `precision` elements (`value` rounded to f16 for f16).
    pub fn filled_as(&self, shape: Shape, value: f32, precision: Precision) -> Result<GpuTensor> {
        let tensor = self.empty_as(shape, precision)?;
        let piece = (STAGING_BYTES / 4) as usize;
        let block = vec![value; piece.min(shape.len())];
        let mut done = 0;
        while done < shape.len() {
            let n = block.len().min(shape.len() - done);
            self.write_as(&tensor.buffer, done, &block[..n], precision)?;
            done += n;
        }
        Ok(tensor)
    }

    /// Downloads a tensor into an ndarray (blocking; in a browser use
    /// [`Gpu::download_async`]).
    pub fn download(&self, tensor: &GpuTensor) -> Result<Array4<f32>> {
        block_on(self.download_async(tensor))
    }

    /// [`Gpu::download`] as a future, which a browser answers when the GPU is done.
    pub async fn download_async(&self, tensor: &GpuTensor) -> Result<Array4<f32>> {
        let data = self
            .read_as_async(&tensor.buffer, 0, tensor.shape.len(), tensor.precision)
            .await?;
        Array4::from_shape_vec(tensor.shape.dims(), data)
            .map_err(|e| Error::Internal(format!("read-back of {}: {e}", tensor.shape)))
    }

    /// Reads `len` f32 elements starting at element `start` of a buffer.
    pub(crate) fn read_f32(
        &self,
        buffer: &wgpu::Buffer,
        start: usize,
        len: usize,
    ) -> Result<Vec<f32>> {
        block_on(self.read_f32_async(buffer, start, len))
    }

    /// Reads `len` elements of `precision` starting at element `start` (even for f16) of a
    /// buffer, widened to f32.
    pub(crate) async fn read_as_async(
        &self,
        buffer: &wgpu::Buffer,
        start: usize,
        len: usize,
        precision: Precision,
    ) -> Result<Vec<f32>> {
        match precision {
            Precision::F32 => self.read_f32_async(buffer, start, len).await,
            Precision::F16 => {
                if !start.is_multiple_of(2) {
                    return Err(Error::Internal(format!(
                        "f16 read at the odd element offset {start}"
                    )));
                }
                // Whole 4-byte words: an odd count reads one more element (the buffer's
                // rounding leaves room for it), dropped here.
                let words = self
                    .read_f32_async(buffer, start / 2, len.div_ceil(2))
                    .await?;
                let half: &[half::f16] = bytemuck::cast_slice(&words);
                Ok(from_f16(&half[..len]))
            }
        }
    }

    /// [`Gpu::read_f32`] as a future.
    pub(crate) async fn read_f32_async(
        &self,
        buffer: &wgpu::Buffer,
        start: usize,
        len: usize,
    ) -> Result<Vec<f32>> {
        let total = len as u64 * 4;
        let staging_size = total.clamp(4, STAGING_BYTES);
        let staging = self.create_buffer(
            "read-back staging",
            staging_size,
            wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
        )?;
        let mut out = Vec::with_capacity(len);
        let mut done = 0u64;
        while done < total {
            let n = (total - done).min(staging_size);
            let commands = self.scoped("recording a read-back", 0, || {
                let mut encoder = self.device.create_command_encoder(&Default::default());
                encoder.copy_buffer_to_buffer(buffer, start as u64 * 4 + done, &staging, 0, n);
                encoder.finish()
            })?;
            self.submit_and_wait(commands)?;
            out.extend_from_slice(bytemuck::cast_slice(
                &self.read_mapped_async(&staging, n).await?,
            ));
            done += n;
        }
        Ok(out)
    }

    /// Waits until the device has finished the work submitted so far: natively a blocking wait
    /// (ready when first polled); in a browser the queue's answer that its work is done.
    pub(crate) async fn wait_async(&self) -> Result<()> {
        #[cfg(not(target_arch = "wasm32"))]
        {
            self.wait(None, "waiting for the GPU")?;
        }
        #[cfg(target_arch = "wasm32")]
        {
            let answer = Answer::default();
            let sender = answer.clone();
            self.queue.on_submitted_work_done(move || sender.set(()));
            answer.await;
        }
        self.check_health()
    }

    /// [`Gpu::read_mapped`] as a future: natively the same blocking call (so it is ready when
    /// first polled); in a browser it waits for the mapping without blocking.
    pub(crate) async fn read_mapped_async(
        &self,
        buffer: &wgpu::Buffer,
        len: u64,
    ) -> Result<Vec<u8>> {
        #[cfg(not(target_arch = "wasm32"))]
        {
            self.read_mapped(buffer, len)
        }
        #[cfg(target_arch = "wasm32")]
        {
            let slice = buffer.slice(0..len.max(4));
            let answer = Answer::default();
            let sender = answer.clone();
            self.scoped("mapping a read-back buffer", len, || {
                slice.map_async(wgpu::MapMode::Read, move |r| sender.set(r))
            })?;
            if let Err(e) = answer.await {
                self.check_health()?;
                return Err(Error::Device(format!("mapping the read-back buffer: {e}")));
            }
            self.check_health()?;
            let data = slice
                .get_mapped_range()
                .map_err(|e| Error::Device(format!("mapped range: {e}")))?
                .to_vec();
            buffer.unmap();
            Ok(data)
        }
    }

    /// Maps a read-back buffer, copies `len` bytes out and unmaps it.
    #[cfg(not(target_arch = "wasm32"))]
    pub(crate) fn read_mapped(&self, buffer: &wgpu::Buffer, len: u64) -> Result<Vec<u8>> {
        let slice = buffer.slice(0..len.max(4));
        let (tx, rx) = std::sync::mpsc::channel();
        self.scoped("mapping a read-back buffer", len, || {
            slice.map_async(wgpu::MapMode::Read, move |r| {
                let _ = tx.send(r);
            })
        })?;
        self.wait(None, "waiting for a read-back")?;
        // The callback has run by now, on this thread or on one polling concurrently (which
        // may still be delivering it); a lost device answers it with an error.
        let mapped = match rx.recv_timeout(self.timeout().unwrap_or(std::time::Duration::MAX)) {
            Ok(r) => r,
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
                return Err(Error::Device("the read-back was never answered".into()));
            }
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => {
                self.check_health()?;
                return Err(Error::Device("read-back callback dropped".into()));
            }
        };
        if let Err(e) = mapped {
            self.check_health()?;
            return Err(Error::Device(format!("mapping the read-back buffer: {e}")));
        }
        let data = slice
            .get_mapped_range()
            .map_err(|e| Error::Device(format!("mapped range: {e}")))?
            .to_vec();
        buffer.unmap();
        Ok(data)
    }
}

/// A value delivered once by a callback (the browser's answer to a mapping), awaited as a
/// future.
#[cfg(target_arch = "wasm32")]
struct Answer<T>(std::sync::Arc<std::sync::Mutex<(Option<T>, Option<std::task::Waker>)>>);

#[cfg(target_arch = "wasm32")]
impl<T> Default for Answer<T> {
    fn default() -> Self {
        Self(Default::default())
    }
}

#[cfg(target_arch = "wasm32")]
impl<T> Clone for Answer<T> {
    fn clone(&self) -> Self {
        Self(self.0.clone())
    }
}

#[cfg(target_arch = "wasm32")]
impl<T> Answer<T> {
    /// Stores the value and wakes the task awaiting it.
    fn set(&self, value: T) {
        if let Ok(mut slot) = self.0.lock() {
            slot.0 = Some(value);
            if let Some(waker) = slot.1.take() {
                waker.wake();
            }
        }
    }
}

#[cfg(target_arch = "wasm32")]
impl<T> std::future::Future for Answer<T> {
    type Output = T;

    fn poll(self: std::pin::Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> std::task::Poll<T> {
        match self.0.lock() {
            Ok(mut slot) => match slot.0.take() {
                Some(value) => std::task::Poll::Ready(value),
                None => {
                    slot.1 = Some(cx.waker().clone());
                    std::task::Poll::Pending
                }
            },
            // Never poisoned: nothing panics while holding the lock.
            Err(_) => std::task::Poll::Pending,
        }
    }
}
