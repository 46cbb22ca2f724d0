// ScratchArena: reusable F32 scratch buffers for kernels (im2col bands, dequantized weight panels).
// Buffers grow to the largest request and are kept, so a steady-state model run allocates no scratch.
#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// One growable, 64-byte aligned F32 buffer. A kernel checks an arena out of the shared pool with
/// `ScratchArena.withArena`, uses `floats(_:)` for the duration of the closure, and hands it back.
public final class ScratchArena: @unchecked Sendable {
    // @unchecked: an arena is used by one thread at a time (the pool hands each out exclusively).
    private var pointer: UnsafeMutablePointer<Float>?
    private var capacity = 0

    init() {}

    deinit { free(pointer) }

    /// A buffer of at least `count` floats (contents unspecified), valid until the next `floats` call
    /// on this arena or the end of the `withArena` closure that handed the arena out.
    func floats(_ count: Int) -> UnsafeMutablePointer<Float> {
        if count > capacity || pointer == nil {
            free(pointer)
            pointer = nil
            // Round up to 64 KiB so slightly larger requests do not reallocate every time.
            let rounded = (max(count, 16) + 16383) & ~16383
            var raw: UnsafeMutableRawPointer?
            // (Not inside precondition: -Ounchecked builds do not evaluate its condition.)
            let status = posix_memalign(&raw, 64, rounded * MemoryLayout<Float>.stride)
            guard status == 0, let raw else { fatalError("ScratchArena: cannot allocate \(rounded) floats") }
            pointer = raw.bindMemory(to: Float.self, capacity: rounded)
            capacity = rounded
        }
        return pointer!
    }

    /// Bytes this arena holds.
    var bytes: Int { capacity * MemoryLayout<Float>.stride }

    fileprivate func drop() {
        free(pointer)
        pointer = nil
        capacity = 0
    }

    private static let pool = ArenaPool()

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
}

/// The process-wide set of arenas. Its size is the largest number ever in use at once (about the core
/// count plus one for a caller-held buffer).
private final class ArenaPool: @unchecked Sendable {
    // @unchecked: every field is accessed under `mutex`.
    private var mutex = pthread_mutex_t()
    private var idle: [ScratchArena] = []
    private var all: [ScratchArena] = []

    init() { pthread_mutex_init(&mutex, nil) }

    func checkOut() -> ScratchArena {
        pthread_mutex_lock(&mutex)
        defer { pthread_mutex_unlock(&mutex) }
        if let a = idle.popLast() { return a }
        let a = ScratchArena()
        all.append(a)
        return a
    }

    func checkIn(_ a: ScratchArena) {
        pthread_mutex_lock(&mutex)
        idle.append(a)
        pthread_mutex_unlock(&mutex)
    }

    func totalBytes() -> Int {
        pthread_mutex_lock(&mutex)
        defer { pthread_mutex_unlock(&mutex) }
        return all.reduce(0) { $0 + $1.bytes }
    }

    func releaseIdle() {
        pthread_mutex_lock(&mutex)
        for a in idle { a.drop() }
        pthread_mutex_unlock(&mutex)
    }
}
