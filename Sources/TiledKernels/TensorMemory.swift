// TensorMemory: where tensor values live. Large tensors take page-aligned blocks from a process-wide pool
// that keeps freed blocks for the next tensor of the same size, so a model run's activations stop costing
// fresh page faults on every op; a retention limit bounds what the pool keeps idle.
import Synchronization
#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// The F32 values of one tensor. Immutable identity: `Tensor` copies it before writing when it is shared.
public final class TensorStorage: @unchecked Sendable {
    // @unchecked: the pointer is written only through a uniquely referenced storage (Tensor's copy-on-write).
    let pointer: UnsafeMutablePointer<Float>
    let count: Int
    /// Bytes of the pooled block behind `pointer`; 0 for storage from malloc.
    private let blockBytes: Int

    /// Storage for `count` floats whose values are unspecified (a fresh block reads as zeros).
    init(uninitializedCount count: Int) {
        self.count = count
        TensorMemory.count(bytes: count * MemoryLayout<Float>.stride)
        let bytes = max(count, 1) * MemoryLayout<Float>.stride
        if bytes >= TensorMemory.pooledMinimumBytes {
            let block = TensorMemory.pool.take(bytes: bytes)
            pointer = block.pointer.bindMemory(to: Float.self, capacity: count)
            blockBytes = block.bytes
        } else {
            var raw: UnsafeMutableRawPointer?
            guard posix_memalign(&raw, 64, bytes) == 0, let raw else {
                fatalError("TensorStorage: cannot allocate \(bytes) bytes")
            }
            pointer = raw.bindMemory(to: Float.self, capacity: max(count, 1))
            blockBytes = 0
        }
    }

    deinit {
        TensorMemory.count(bytes: -count * MemoryLayout<Float>.stride)
        if blockBytes > 0 {
            TensorMemory.pool.give(UnsafeMutableRawPointer(pointer), bytes: blockBytes)
        } else {
            free(pointer)
        }
    }
}

/// The tensor block pool's settings and counters.
public enum TensorMemory {
    /// Tensors of at least this many bytes (256 KiB) come from the pool; smaller ones from malloc's heap,
    /// which reuses them without page faults already.
    public static let pooledMinimumBytes = 256 << 10

    fileprivate static let pool = BlockPool()

    /// Caps the bytes the pool keeps, live and idle together: a freed block is kept only while live plus
    /// idle blocks stay within `bytes`, otherwise idle blocks are unmapped, least recently freed first. Live
    /// tensors are never cut, so the pool's footprint is at most max(`bytes`, the live tensors). nil (the
    /// default): keep every freed block until `releaseIdle`. The pipeline sets each stage's limit as the stage
    /// starts, from the run's context (its memory plan, or the same activation models when it has none).
    public static func limitFootprint(_ bytes: Int?) { pool.setLimit(bytes) }

    /// The limit `limitFootprint` set last (nil: none).
    public static var footprintLimit: Int? { pool.limit() }

    /// Unmaps every idle block (between pipeline stages, whose tensor sizes differ).
    public static func releaseIdle() { pool.trim(to: 0) }

    /// Bytes in blocks held by live tensors.
    public static var liveBytes: Int { pool.counters().live }

    /// Bytes in idle blocks kept for reuse.
    public static var idleBytes: Int { pool.counters().idle }

    /// Blocks mapped since the process started (a steady-state run maps none per step).
    public static var blocksMapped: Int { pool.counters().mapped }

    /// The most bytes the pool held mapped at once, live and idle blocks together, since the last
    /// `resetPeakPoolBytes` (or the start): the pool's share of the process's peak.
    public static var peakPoolBytes: Int { pool.peakFootprint() }

    /// Starts a new pool high-water mark at what the pool holds now.
    public static func resetPeakPoolBytes() { pool.resetPeakFootprint() }

    private static let liveTensorBytes = Atomic<Int>(0)
    private static let peakLiveTensorBytes = Atomic<Int>(0)

    /// Bytes of the values of every live tensor, pooled or from malloc (4 × elements; an empty tensor counts 0):
    /// what the memory planner's activation models add up, before pool or heap rounding.
    public static var tensorBytes: Int { liveTensorBytes.load(ordering: .relaxed) }

    /// The most `tensorBytes` reached since the last `resetPeakTensorBytes` (or the start).
    public static var peakTensorBytes: Int { peakLiveTensorBytes.load(ordering: .relaxed) }

    /// Starts a new high-water mark at the current `tensorBytes`.
    public static func resetPeakTensorBytes() {
        peakLiveTensorBytes.store(liveTensorBytes.load(ordering: .relaxed), ordering: .relaxed)
    }

    fileprivate static func count(bytes: Int) {
        let now = liveTensorBytes.add(bytes, ordering: .relaxed).newValue
        guard bytes > 0 else { return }
        var seen = peakLiveTensorBytes.load(ordering: .relaxed)
        while now > seen {
            let (exchanged, original) = peakLiveTensorBytes.compareExchange(expected: seen, desired: now,
                                                                           ordering: .relaxed)
            if exchanged { break }
            seen = original
        }
    }
}

/// Page-aligned anonymous mappings keyed by their size. A freed block goes to the idle list of its size; a
/// request takes the most recently freed block of its exact size, else (without a limit) the smallest idle block
/// up to a quarter larger, else maps a new one. Under a limit only exact sizes are reused, so the blocks live
/// tensors hold are their page-rounded sizes and the pool stays within max(limit, those): a planner that
/// sets the limit to its tensor model can count on it.
private final class BlockPool: Sendable {
    /// @unchecked: raw pointers are not Sendable; the idle blocks they address belong to the pool and are only
    /// reached through `state`'s lock.
    private struct State: @unchecked Sendable {
        /// Idle blocks by size in bytes, most recently freed last.
        var idle: [Int: [UnsafeMutableRawPointer]] = [:]
        /// Every idle block's size in the order they were freed (oldest first), for eviction.
        var idleOrder: [(pointer: UnsafeMutableRawPointer, bytes: Int)] = []
        var idleBytes = 0
        var liveBytes = 0
        var mappedCount = 0
        var limit: Int?
        var peakFootprint = 0

        /// The idle size to reuse for a request of `bytes`: exact, else (no limit) the smallest at most 25% larger.
        func bestIdleSize(for bytes: Int) -> Int? {
            if idle[bytes] != nil { return bytes }
            if limit != nil { return nil }
            var best: Int?
            for size in idle.keys where size > bytes && size <= bytes + bytes / 4 && size < (best ?? .max) {
                best = size
            }
            return best
        }

        /// Unmaps idle blocks, oldest first, until at most `target` idle bytes remain.
        mutating func evict(downTo target: Int) {
            var dropped = 0
            while idleBytes > target, dropped < idleOrder.count {
                let (pointer, bytes) = idleOrder[dropped]
                dropped += 1
                if var list = idle[bytes], let i = list.firstIndex(of: pointer) {
                    list.remove(at: i)
                    idle[bytes] = list.isEmpty ? nil : list
                }
                idleBytes -= bytes
                munmap(pointer, bytes)
            }
            idleOrder.removeFirst(dropped)
        }
    }

    private let state = Mutex(State())

    private static let page = Int(sysconf(Int32(_SC_PAGESIZE)))

    func take(bytes requested: Int) -> (pointer: UnsafeMutableRawPointer, bytes: Int) {
        let bytes = (requested + Self.page - 1) / Self.page * Self.page
        let reused: UnsafeMutableRawPointer?, size: Int
        (reused, size) = state.withLock { box in
            if let size = box.bestIdleSize(for: bytes), let block = box.idle[size]?.popLast() {
                if box.idle[size]?.isEmpty == true { box.idle[size] = nil }
                if let i = box.idleOrder.lastIndex(where: { $0.pointer == block }) {
                    box.idleOrder.remove(at: i)
                }
                box.idleBytes -= size
                box.liveBytes += size
                return (block, size)
            }
            box.liveBytes += bytes
            box.mappedCount += 1
            // Make room first, so the new block and the idle ones stay within the limit.
            if let limit = box.limit { box.evict(downTo: max(limit - box.liveBytes, 0)) }
            box.peakFootprint = max(box.peakFootprint, box.liveBytes + box.idleBytes)
            return (nil, bytes)
        }
        if let reused { return (reused, size) }
        guard let raw = mmap(nil, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0),
              raw != MAP_FAILED else {
            fatalError("TensorMemory: cannot map \(bytes) bytes for a tensor")
        }
        if bytes >= hugePageMinimumBytes { adviseHugePages(raw, bytes: bytes) }
        return (raw, bytes)
    }

    func give(_ pointer: UnsafeMutableRawPointer, bytes: Int) {
        let kept = state.withLock { box in
            box.liveBytes -= bytes
            if let limit = box.limit, box.liveBytes + bytes > limit { return false }
            box.idle[bytes, default: []].append(pointer)
            box.idleOrder.append((pointer, bytes))
            box.idleBytes += bytes
            if let limit = box.limit { box.evict(downTo: max(limit - box.liveBytes, 0)) }
            return true
        }
        if !kept { munmap(pointer, bytes) }
    }

    func trim(to target: Int) {
        state.withLock { $0.evict(downTo: target) }
    }

    func setLimit(_ bytes: Int?) {
        state.withLock { box in
            box.limit = bytes
            if let bytes { box.evict(downTo: max(bytes - box.liveBytes, 0)) }
        }
    }

    func limit() -> Int? { state.withLock { $0.limit } }

    func peakFootprint() -> Int { state.withLock { $0.peakFootprint } }

    func resetPeakFootprint() { state.withLock { $0.peakFootprint = $0.liveBytes + $0.idleBytes } }

    func counters() -> (live: Int, idle: Int, mapped: Int) {
        state.withLock { ($0.liveBytes, $0.idleBytes, $0.mappedCount) }
    }
}

/// Fresh pool blocks at least this large (32 MiB) are backed by transparent huge pages where the kernel
/// allows it.
let hugePageMinimumBytes = 32 << 20

/// madvise(MADV_HUGEPAGE) over the whole 2 MiB pages inside `bytes` at `pointer`, before the first write.
/// A fresh large tensor's first write otherwise faults in one 4 KiB page at a time: measured 150 ms per
/// 256 MiB on the reference VM against 26 ms with 2 MiB pages, about 1 s of a 512×512 VAE decode. A hint only:
/// with THP "never" (or no free huge pages) the kernel falls back to small pages. Linux only.
func adviseHugePages(_ pointer: UnsafeMutableRawPointer, bytes: Int) {
    #if os(Linux)
    let huge = 2 << 20
    let start = (Int(bitPattern: pointer) + huge - 1) & ~(huge - 1)
    let end = (Int(bitPattern: pointer) + bytes) & ~(huge - 1)
    if end > start, let aligned = UnsafeMutableRawPointer(bitPattern: start) {
        _ = madvise(aligned, end - start, MADV_HUGEPAGE)
    }
    #endif
}
