// KernelProfile: optional wall-clock totals per kernel (SDD_KERNEL_PROFILE=1), printed to stderr at exit,
// so a whole-model run shows where its time goes (conv 3×3 vs 1×1, linear, attention, norms …).
// SDD_KERNEL_PROFILE=shapes also splits kernels that report a shape (convolutions) by that shape.
import Synchronization
#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

enum KernelProfile {
    /// Whether SDD_KERNEL_PROFILE was set (to anything but "0") when the process started.
    static let enabled: Bool = {
        guard let v = getenv("SDD_KERNEL_PROFILE") else { return false }
        let on = String(cString: v) != "0"
        if on { atexit { KernelProfile.report() } }
        return on
    }()

    /// Whether SDD_KERNEL_PROFILE=shapes asked for per-shape totals.
    static let detailed: Bool = {
        guard enabled, let v = getenv("SDD_KERNEL_PROFILE") else { return false }
        return String(cString: v) == "shapes"
    }()

    /// Seconds, calls and flops per kernel name.
    private static let totals = Mutex<[String: (seconds: Double, calls: Int, flops: Double)]>([:])

    /// Runs `body`, adding its wall time (and `flops`, if known) to `name`'s total when profiling is on.
    @inline(__always)
    static func measure<R>(_ name: @autoclosure () -> String, flops: @autoclosure () -> Double = 0,
                           _ body: () -> R) -> R {
        if !enabled { return body() }
        let t0 = monotonicSeconds()
        let r = body()
        let dt = monotonicSeconds() - t0
        let key = name(), f = flops()
        totals.withLock { totals in
            let old = totals[key] ?? (0, 0, 0)
            totals[key] = (old.seconds + dt, old.calls + 1, old.flops + f)
        }
        return r
    }

    /// Prints the totals to stderr; reads them under the lock, as a kernel on another thread may still be adding.
    static func report() {
        let all = totals.withLock { $0 }.sorted { $0.value.seconds > $1.value.seconds }
        let sum = all.reduce(0) { $0 + $1.value.seconds }
        func fixed(_ v: Double, _ digits: Int) -> String {
            var p = 1.0
            for _ in 0..<digits { p *= 10 }
            return "\((v * p).rounded() / p)"
        }
        var text = "kernel profile (wall seconds, total \(fixed(sum, 2))):\n"
        for (k, v) in all {
            let rate = v.flops > 0 ? "  \(Int(v.flops / v.seconds / 1e9)) GFLOP/s" : ""
            text += "  \(k): \(fixed(v.seconds, 3)) s  \(fixed(100 * v.seconds / max(sum, 1e-9), 1))%  \(v.calls) calls\(rate)\n"
        }
        _ = text.withCString { write(2, $0, strlen($0)) }
    }
}
