// ScratchArena: reusable F32 scratch buffers for kernels (im2col bands, dequantized weight panels).
// Buffers grow to the largest request and are kept, so a steady-state model run allocates no scratch;
// under a memory budget the pool can be told to keep at most so many bytes once they are idle.
import Synchronization
#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// One growable, 64-byte aligned F32 buffer. A kernel checks an arena out of the shared pool with
/// `ScratchArena.withArena`, uses `floats(_:)` for the duration of the closure, and hands it back.
public final class ScratchArena: @unchecked Sendable {
    // @unchecked: an arena is used by one thread at a time (the pool hands each out exclusively); the pool
    // changes `pointer` and `capacity` only under its mutex, while the arena is idle or asks it to.
    fileprivate var pointer: UnsafeMutablePointer<Float>?
    fileprivate var capacity = 0

    init() {}

    deinit { free(pointer) }

    /// A buffer of at least `count` floats (contents unspecified), valid until the next `floats` call
    /// on this arena or the end of the `withArena` closure that handed the arena out.
    func floats(_ count: Int) -> UnsafeMutablePointer<Float> {
        if count > capacity || pointer == nil { ScratchArena.pool.grow(self, toFloats: max(count, 16)) }
        return pointer!
    }

    /// Bytes this arena holds.
    var bytes: Int { capacity * MemoryLayout<Float>.stride }

    /// Rounds up to 64 KiB so slightly larger requests do not reallocate every time.
    static func rounded(_ count: Int) -> Int { (max(count, 16) + 16383) & ~16383 }

    fileprivate static let pool = ArenaPool()

    /// Runs `body` with an arena no other thread is using; arenas are pooled and reused across calls.
    static func withArena<R>(_ body: (ScratchArena) -> R) -> R {
        let arena = pool.checkOut()
        defer { pool.checkIn(arena) }
        return body(arena)
    }

    /// Total bytes held by pooled arenas (idle and in use).
    public static var pooledBytes: Int { pool.totalBytes() }

    /// Frees the buffers of every idle arena (e.g. between pipeline stages); arenas in use are untouched.
    public static func releaseIdle() { pool.releaseIdle() }

    /// Caps the bytes the pool keeps once a kernel hands its arena back: above `bytes`, idle buffers are
    /// freed, largest first (nil, the default: keep every buffer for the next call). Requests in flight are
    /// never cut, so a kernel still gets all the scratch it asks for; the cap bounds what stays behind.
    public static func limitRetainedBytes(_ bytes: Int?) { pool.setRetainLimit(bytes) }

    /// The cap `limitRetainedBytes` set last (nil: none).
    public static var retainedBytesLimit: Int? { pool.retainLimit() }

    /// The most scratch the products hold at once with the standard limits (see `GemmLimits.peakScratchBytes`).
    public static func peakDemandBytes(largestWeightFloats: Int, largestBandFloats: Int) -> Int {
        GemmLimits.standard.peakScratchBytes(largestWeightFloats: largestWeightFloats,
                                             largestBandFloats: largestBandFloats)
    }

    /// The most bytes the pool held at once (idle and in use) since the last `resetHighWater`.
    public static var highWaterBytes: Int { pool.highWater() }

    /// Starts a new high-water mark from what the pool holds now.
    public static func resetHighWater() { pool.resetHighWater() }
}

/// The process-wide set of arenas. Its size is the largest number ever in use at once (about the core
/// count plus one for a caller-held buffer).
private final class ArenaPool: Sendable {
    private struct State {
        var idle: [ScratchArena] = []
        /// Floats held by all arenas.
        var held = 0
        var retainLimit: Int?
        /// The most floats held at once since the last reset.
        var highWater = 0

        /// Frees `arena`'s buffer.
        mutating func drop(_ arena: ScratchArena) {
            free(arena.pointer)
            arena.pointer = nil
            held -= arena.capacity
            arena.capacity = 0
        }
    }

    private let state = Mutex(State())

    func checkOut() -> ScratchArena {
        state.withLock { $0.idle.popLast() } ?? ScratchArena()
    }

    func checkIn(_ a: ScratchArena) {
        state.withLock { state in
            state.idle.append(a)
            guard let limit = state.retainLimit, state.held * MemoryLayout<Float>.stride > limit else { return }
            for arena in state.idle.sorted(by: { $0.capacity > $1.capacity }) {
                if state.held * MemoryLayout<Float>.stride <= limit { break }
                state.drop(arena)
            }
        }
    }

    /// Gives `arena` (checked out by the caller) a new buffer of at least `count` floats.
    func grow(_ arena: ScratchArena, toFloats count: Int) {
        state.withLock { state in
            state.drop(arena)
            let rounded = ScratchArena.rounded(count)
            var raw: UnsafeMutableRawPointer?
            // (Not inside precondition: -Ounchecked builds do not evaluate its condition.)
            let status = posix_memalign(&raw, 64, rounded * MemoryLayout<Float>.stride)
            guard status == 0, let raw else { fatalError("ScratchArena: cannot allocate \(rounded) floats") }
            arena.pointer = raw.bindMemory(to: Float.self, capacity: rounded)
            arena.capacity = rounded
            state.held += rounded
            state.highWater = max(state.highWater, state.held)
        }
    }

    func totalBytes() -> Int {
        state.withLock { $0.held * MemoryLayout<Float>.stride }
    }

    func highWater() -> Int { state.withLock { $0.highWater * MemoryLayout<Float>.stride } }

    func resetHighWater() { state.withLock { $0.highWater = $0.held } }

    func releaseIdle() {
        state.withLock { state in
            for a in state.idle { state.drop(a) }
        }
    }

    func retainLimit() -> Int? { state.withLock { $0.retainLimit } }

    func setRetainLimit(_ bytes: Int?) {
        state.withLock { $0.retainLimit = bytes }
    }
}
