// ProcessMemory: this process's memory as the kernel reports it (/proc/self/status), and a sampler
// that records the anonymous / file-backed split at the moment of peak resident set size.

import Foundation
import Synchronization
import CKernels
import TiledKernels

public enum ProcessMemory {
    /// Resident memory figures, in bytes.
    public struct Snapshot: Sendable, Equatable {
        public var rss = 0
        public var rssAnon = 0
        public var rssFile = 0
        public var peakRSS = 0

        public init() {}
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

    /// The allocator setting of a process that runs under a memory budget, set once at start (by `sdd generate`,
    /// `bench` and the daemon's worker), never per run. glibc serves every allocation of 1 MiB or more with its
    /// own mapping, returned to the kernel on free (glibc otherwise raises that threshold as large blocks are
    /// freed and keeps them in its heaps, which fragments). Tensors come from `TensorMemory`'s pool, which reuses
    /// their pages without new faults; each run bounds it, and the kernels' idle scratch (returning it after every
    /// kernel cost ~10 M page faults per 512×512 image), by its `RunContext`, stage by stage.
    public static func preferCompactHeap() {
        _ = compactHeap
    }

    private static let compactHeap: Void = { _ = ck_set_malloc_mmap_threshold(1 << 20) }()

    /// Idle scratch kept under a budget at least: one 16 MiB buffer (a whole dequantized weight, or two bands).
    public static let retainedScratchBytes = 16 << 20
}

/// Polls /proc/self/status on a background thread and keeps the snapshot with the largest VmRSS, so
/// a benchmark can say how much of its peak was anonymous memory and how much mapped file pages.
public final class PeakMemorySampler: Sendable {
    /// The largest snapshot so far, and whether the thread should go on; the thread stops when `running` is cleared.
    private let state = Mutex<(peak: ProcessMemory.Snapshot, running: Bool)>((ProcessMemory.Snapshot(), true))
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

    private var isRunning: Bool { state.withLock { $0.running } }

    public func sample() {
        guard let s = ProcessMemory.snapshot() else { return }
        state.withLock { state in
            if s.rss > state.peak.rss { state.peak = s }
            state.peak.peakRSS = max(state.peak.peakRSS, s.peakRSS)
        }
    }

    /// The snapshot taken at the highest VmRSS seen so far (peakRSS is the kernel's VmHWM).
    public var peakSnapshot: ProcessMemory.Snapshot {
        sample()
        return state.withLock { $0.peak }
    }

    public func stop() {
        state.withLock { $0.running = false }
    }
}

/// The memory this process may use as the system limits it: the tightest memory cgroup limit over its cgroup and
/// the cgroups above it (v2 `memory.max` and `memory.high`, v1 `memory.limit_in_bytes`), or MemAvailable from
/// /proc/meminfo when it is smaller or no cgroup limits the process. Under systemd, a unit's `MemoryMax=` and
/// `MemoryHigh=` are such limits. This is what `--memory-budget` defaults to, less `headroom`.
public struct MemoryLimit: Sendable, Equatable, CustomStringConvertible {
    /// The limit, in bytes.
    public var bytes: Int
    /// Where it was read, e.g. "cgroup v2 memory.max of /system.slice/sdd.service" or "MemAvailable".
    public var source: String

    public init(bytes: Int, source: String) {
        self.bytes = bytes
        self.source = source
    }

    /// What is kept back from the limit for what a plan does not count (the page cache of streamed weights, which a
    /// cgroup charges too, and the allocator's slack): an eighth, at least 32 MiB.
    public var headroom: Int { max(bytes / 8, 32 << 20) }

    /// The budget to plan within: the limit less the headroom (at least 1 byte, so a tiny limit refuses every run).
    public var budget: Int { max(bytes - headroom, 1) }

    public var description: String {
        "\(source) \(MemorySize.describe(bytes)), less \(MemorySize.describe(headroom)) headroom"
    }

    /// Reads the limit from the files under `root` ("/" on a real system; tests pass a folder of fake files).
    /// nil when neither a cgroup limit nor /proc/meminfo can be read.
    public static func detect(root: URL = URL(fileURLWithPath: "/")) -> MemoryLimit? {
        func read(_ path: String) -> String? {
            try? String(contentsOf: root.appendingPathComponent(String(path.drop { $0 == "/" })), encoding: .utf8)
        }
        var best: MemoryLimit?
        func consider(_ bytes: Int, _ source: String) {
            if bytes > 0, bytes < (best?.bytes ?? .max) { best = MemoryLimit(bytes: bytes, source: source) }
        }
        let mounts = (read("/proc/self/mountinfo") ?? "").split(separator: "\n").compactMap(CgroupMount.init)
        for line in (read("/proc/self/cgroup") ?? "").split(separator: "\n") {
            // "0::/path" (v2) or "4:memory:/path" (v1; the controllers are a comma-separated list).
            let fields = line.split(separator: ":", maxSplits: 2, omittingEmptySubsequences: false)
            guard fields.count == 3 else { continue }
            let path = String(fields[2])
            let v2 = fields[0] == "0" && fields[1].isEmpty
            let v1 = fields[1].split(separator: ",").contains("memory")
            guard v2 || v1 else { continue }
            guard let mount = mounts.first(where: { v2 ? $0.isV2 : $0.isV1Memory }) else { continue }
            let files = v2 ? ["memory.max", "memory.high"] : ["memory.limit_in_bytes"]
            // The process's cgroup and every one above it up to the hierarchy's root: each limit applies.
            var relative = path.hasPrefix(mount.root) ? String(path.dropFirst(mount.root.count)) : path
            while true {
                let dir = mount.mountPoint + (relative.hasPrefix("/") || relative.isEmpty ? "" : "/") + relative
                for file in files {
                    guard let text = read(dir + "/" + file)?.trimmingCharacters(in: .whitespacesAndNewlines),
                          let value = Int(text), value < 1 << 60 else { continue }  // "max", or v1's "unlimited"
                    consider(value, "cgroup \(v2 ? "v2" : "v1") \(file) of \(relative.isEmpty ? "/" : relative)")
                }
                guard let slash = relative.lastIndex(of: "/"), !relative.isEmpty else { break }
                relative = String(relative[..<slash])
            }
        }
        for line in (read("/proc/meminfo") ?? "").split(separator: "\n") where line.hasPrefix("MemAvailable:") {
            let parts = line.split(whereSeparator: { $0 == " " || $0 == "\t" })
            if parts.count >= 2, let kb = Int(parts[1]) { consider(kb * 1024, "MemAvailable") }
        }
        return best
    }

    /// One cgroup file system from /proc/self/mountinfo: which part of the hierarchy is mounted where.
    struct CgroupMount {
        var root: String
        var mountPoint: String
        var isV2: Bool
        var isV1Memory: Bool

        /// "36 25 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory"
        init?(_ line: Substring) {
            let halves = line.components(separatedBy: " - ")
            guard halves.count == 2 else { return nil }
            let pre = halves[0].split(separator: " "), post = halves[1].split(separator: " ")
            guard pre.count >= 5, post.count >= 3 else { return nil }
            root = String(pre[3]) == "/" ? "" : String(pre[3])
            mountPoint = String(pre[4])
            isV2 = post[0] == "cgroup2"
            isV1Memory = post[0] == "cgroup" && post[2].split(separator: ",").contains("memory")
            guard isV2 || isV1Memory else { return nil }
        }
    }
}
