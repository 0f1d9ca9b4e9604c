// Process-wide memory set-up: the allocator policy that keeps a training step free of page faults.
import CKernels

public enum Memory {
    /// A training step frees and re-allocates the same activation buffers every step. With glibc's defaults,
    /// buffers above its (dynamic) mmap threshold and the freed top of the heap go back to the kernel, so every
    /// step pays page faults and kernel zeroing again (measured on small@32: 162k minor faults for 7 steps,
    /// ~5% of the time in the kernel). Pinning the threshold at glibc's maximum (32 MiB; larger buffers are still
    /// mmapped and unmapped) and never trimming the heap keeps freed memory for the next step. Peak RSS is unchanged:
    /// memory is reused, not added. Call once at start-up, before the first large allocation.
    public static func keepFreedMemory() {
        hg_keep_freed_memory()
    }
}
