// Parallel: splits independent rows / channels / heads, and the units of a cut GEMM (`GemmGrid`), over the
// machine's cores. Small inputs stay on the calling thread; OpenBLAS itself runs single-threaded (`BLASThreading`).
import Dispatch
#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

enum Parallel {
    /// Online CPU count (at least 1).
    static let cores: Int = max(1, Int(sysconf(Int32(_SC_NPROCESSORS_ONLN))))

    /// Calls `body` on disjoint contiguous ranges that together cover `0..<count`.
    /// `minItemsPerChunk` is the least work worth a thread: below twice that, everything runs inline.
    static func forEachChunk(count: Int, minItemsPerChunk: Int, _ body: (Range<Int>) -> Void) {
        if count <= 0 { return }
        let chunks = min(cores, count / max(1, minItemsPerChunk))
        if chunks <= 1 {
            body(0..<count)
            return
        }
        // The kernels hand in closures over raw buffers; each chunk writes a disjoint range, and
        // concurrentPerform returns only when all chunks are done, so the closure never outlives this call.
        withoutActuallyEscaping(body) { escapable in
            let task = UncheckedSendableBox(escapable)
            DispatchQueue.concurrentPerform(iterations: chunks) { i in
                let lo = count * i / chunks
                let hi = count * (i + 1) / chunks
                task.value(lo..<hi)
            }
        }
    }
}

/// Carries a non-Sendable value into `concurrentPerform`; safe only under the disjoint-ranges rule above.
private struct UncheckedSendableBox<T>: @unchecked Sendable {
    let value: T
    init(_ value: T) { self.value = value }
}

extension Parallel {
    /// Calls `body(i)` for every i in `0..<count`, spreading the calls over the cores; a thread that finishes
    /// early takes the next unit, so a core slowed by another process does not hold the rest back.
    /// `count` ≤ 1 (or one core) runs inline.
    static func forEachUnit(count: Int, _ body: (Int) -> Void) {
        if count <= 0 { return }
        if count == 1 || cores == 1 {
            for i in 0..<count { body(i) }
            return
        }
        withoutActuallyEscaping(body) { escapable in
            let task = UncheckedSendableBox(escapable)
            DispatchQueue.concurrentPerform(iterations: count) { i in task.value(i) }
        }
    }
}
