// ProcessMemory: this process's memory as the kernel reports it (/proc/self/status), and a sampler
// that records the anonymous / file-backed split at the moment of peak resident set size.

import Foundation
import CKernels
import TiledKernels

public enum ProcessMemory {
    /// Resident memory figures, in bytes.
    public struct Snapshot: Sendable, Equatable {
        public var rss = 0
        public var rssAnon = 0
        public var rssFile = 0
        public var peakRSS = 0
    }

    /// Reads VmRSS, RssAnon, RssFile and VmHWM from /proc/self/status (nil where unavailable).
    public static func snapshot() -> Snapshot? {
        guard let text = try? String(contentsOfFile: "/proc/self/status", encoding: .utf8) else { return nil }
        var s = Snapshot()
        for line in text.split(separator: "\n") {
            let parts = line.split(whereSeparator: { $0 == " " || $0 == "\t" })
            guard parts.count >= 2, let kb = Int(parts[1]) else { continue }
            switch parts[0] {
            case "VmRSS:": s.rss = kb * 1024
            case "RssAnon:": s.rssAnon = kb * 1024
            case "RssFile:": s.rssFile = kb * 1024
            case "VmHWM:": s.peakRSS = kb * 1024
            default: break
            }
        }
        return s
    }

    /// VmHWM: the peak resident set size, in bytes.
    public static func peakResidentBytes() -> Int? { snapshot()?.peakRSS }

    /// Settings for a run under a memory budget, within `plan`'s figures. glibc serves every allocation of
    /// 1 MiB or more with its own mapping, returned to the kernel on free (glibc otherwise raises that
    /// threshold as large blocks are freed and keeps them in its heaps, which fragments). Tensors come from
    /// `TensorMemory`'s pool, which reuses their pages without new faults (the pipeline bounds it by the plan's
    /// activations, stage by stage); the kernels' idle scratch arenas keep at most the plan's scratch
    /// (returning it after every kernel cost ~10 M page faults per 512×512 image).
    public static func preferCompactHeap(plan: MemoryPlan) {
        _ = ck_set_malloc_mmap_threshold(1 << 20)
        ScratchArena.limitRetainedBytes(max(plan.scratch, retainedScratchBytes))
    }

    /// Idle scratch kept under a budget at least: one 16 MiB buffer (a whole dequantized weight, or two bands).
    public static let retainedScratchBytes = 16 << 20
}

/// Polls /proc/self/status on a background thread and keeps the snapshot with the largest VmRSS, so
/// a benchmark can say how much of its peak was anonymous memory and how much mapped file pages.
public final class PeakMemorySampler: @unchecked Sendable {
    // @unchecked: `peak` is guarded by `lock`; the thread stops when `running` is cleared.
    private let lock = NSLock()
    private var peak = ProcessMemory.Snapshot()
    private var running = true
    private let interval: TimeInterval

    public init(interval: TimeInterval = 0.02) {
        self.interval = interval
        let thread = Thread { [weak self] in
            while let me = self, me.isRunning {
                me.sample()
                Thread.sleep(forTimeInterval: me.interval)
            }
        }
        thread.start()
    }

    private var isRunning: Bool {
        lock.lock()
        defer { lock.unlock() }
        return running
    }

    public func sample() {
        guard let s = ProcessMemory.snapshot() else { return }
        lock.lock()
        if s.rss > peak.rss { peak = s }
        peak.peakRSS = max(peak.peakRSS, s.peakRSS)
        lock.unlock()
    }

    /// The snapshot taken at the highest VmRSS seen so far (peakRSS is the kernel's VmHWM).
    public var peakSnapshot: ProcessMemory.Snapshot {
        sample()
        lock.lock()
        defer { lock.unlock() }
        return peak
    }

    public func stop() {
        lock.lock()
        running = false
        lock.unlock()
    }
}
