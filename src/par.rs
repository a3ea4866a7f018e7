//! Data parallelism on the CPU, with or without threads.
//!
//! With the `threads` feature (the default) this is rayon: its prelude, its pool's size, and
//! gemm's rayon parallelism. Without it (WebAssembly in a browser, or a build that wants no
//! thread pool) the same method names run sequentially on the standard library's iterators,
//! so no call site needs a `cfg`: `par_chunks`, `par_chunks_mut`, `par_iter_mut` on slices,
//! `into_par_iter` on anything iterable (ranges, vectors, ndarray's axis iterators), and
//! ndarray's `par_mapv_inplace`. The adaptors used after them (`zip`, `enumerate`, `map`,
//! `filter`, `for_each`, `count`, `collect`) exist on both kinds of iterator with the same
//! meaning; rayon's two-argument `reduce` has no such twin, so it is not used.
//!
//! The `maybe-rayon` crate does the same for a few methods only (not `par_chunks_mut`,
//! `par_iter_mut` or `current_num_threads`), hence these few lines.

#[cfg(feature = "threads")]
pub(crate) use rayon::current_num_threads;
#[cfg(feature = "threads")]
pub(crate) use rayon::prelude::*;

/// The parallelism of gemm's matrix products: every thread of rayon's pool.
#[cfg(feature = "threads")]
pub(crate) fn gemm_parallelism() -> gemm::Parallelism {
    gemm::Parallelism::Rayon(current_num_threads())
}

#[cfg(not(feature = "threads"))]
pub(crate) use sequential::*;

#[cfg(not(feature = "threads"))]
mod sequential {
    /// One thread: the caller's. (Only the x86-64 kernels size their work by it.)
    #[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
    pub(crate) fn current_num_threads() -> usize {
        1
    }

    /// The parallelism of gemm's matrix products: none.
    pub(crate) fn gemm_parallelism() -> gemm::Parallelism {
        gemm::Parallelism::None
    }

    /// `par_chunks` of rayon's slices, in order on this thread.
    pub(crate) trait ParallelSlice<T> {
        fn par_chunks(&self, size: usize) -> std::slice::Chunks<'_, T>;
    }

    impl<T> ParallelSlice<T> for [T] {
        fn par_chunks(&self, size: usize) -> std::slice::Chunks<'_, T> {
            self.chunks(size)
        }
    }

    /// `par_chunks_mut` and `par_iter_mut` of rayon's slices, in order on this thread.
    pub(crate) trait ParallelSliceMut<T> {
        fn par_chunks_mut(&mut self, size: usize) -> std::slice::ChunksMut<'_, T>;
        fn par_iter_mut(&mut self) -> std::slice::IterMut<'_, T>;
    }

    impl<T> ParallelSliceMut<T> for [T] {
        fn par_chunks_mut(&mut self, size: usize) -> std::slice::ChunksMut<'_, T> {
            self.chunks_mut(size)
        }

        fn par_iter_mut(&mut self) -> std::slice::IterMut<'_, T> {
            self.iter_mut()
        }
    }

    /// `into_par_iter` of rayon: the value's own iterator.
    pub(crate) trait IntoParallelIterator: IntoIterator + Sized {
        fn into_par_iter(self) -> Self::IntoIter {
            self.into_iter()
        }
    }

    impl<I: IntoIterator> IntoParallelIterator for I {}

    /// ndarray's `par_mapv_inplace` (which needs its `rayon` feature): `mapv_inplace`.
    pub(crate) trait ParallelMapvInplace<A> {
        fn par_mapv_inplace(&mut self, f: impl Fn(A) -> A);
    }

    impl<A, S, D> ParallelMapvInplace<A> for ndarray::ArrayBase<S, D>
    where
        A: Clone,
        S: ndarray::DataMut<Elem = A>,
        D: ndarray::Dimension,
    {
        fn par_mapv_inplace(&mut self, f: impl Fn(A) -> A) {
            self.mapv_inplace(f)
        }
    }
}
