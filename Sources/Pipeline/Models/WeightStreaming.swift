// WeightStreaming: keeps resident weights near one module. Before a module runs, the next one's pages
// are requested (madvise WILLNEED); after it runs, its own pages are dropped (MADV_DONTNEED, and with
// `dropPageCache` also posix_fadvise DONTNEED). Only weights that view a mapped file are affected.

import MMapWeights
import TiledKernels

/// How weights stay in memory between uses.
public enum WeightResidency: String, Sendable, Codable, CaseIterable {
    /// Pages stay mapped once read (fastest when RAM is plentiful).
    case resident
    /// Each module's pages are released after it runs; the next module is prefetched.
    case streamed
    /// As `streamed`, and the file pages are also dropped from the page cache.
    case strict
}

/// Walks a fixed execution order of weight groups, prefetching the next and releasing the last.
final class WeightStreamer: @unchecked Sendable {
    // @unchecked: used by the single thread that runs the model; `cursor` is only touched there.
    let residency: WeightResidency
    private let order: [[Weight]]
    private var cursor = 0

    /// A streamer that only runs bodies (for modules used without streaming).
    static let none = WeightStreamer(order: [], residency: .resident)

    init(order: [[Weight]], residency: WeightResidency) {
        self.order = order
        self.residency = residency
    }

    /// Runs the next group's work: prefetches the group after it, runs `body`, releases this group.
    func run<T>(_ body: () throws -> T) rethrows -> T {
        guard residency != .resident, !order.isEmpty else { return try body() }
        let index = cursor % order.count
        if index == 0 { WeightStreamer.prefetch(order[0]) }
        if index + 1 < order.count { WeightStreamer.prefetch(order[index + 1]) }
        let result = try body()
        WeightStreamer.release(order[index], dropPageCache: residency == .strict)
        cursor += 1
        return result
    }

    /// Bytes of all groups.
    var totalBytes: Int { order.reduce(0) { $0 + $1.reduce(0) { $0 + $1.bytes.count } } }

    /// Values in the largest single weight.
    var largestWeightElements: Int { order.joined().map(\.count).max() ?? 0 }

    /// Bytes of LoRA-merged weights (`LoRAApplication.merge`): anonymous memory that streaming cannot release.
    var mergedBytes: Int { order.joined().filter { $0.owner is MergedBytes }.reduce(0) { $0 + $1.bytes.count } }

    /// Bytes of the largest group.
    var largestGroupBytes: Int { order.map { $0.reduce(0) { $0 + $1.bytes.count } }.max() ?? 0 }

    /// The file and byte range each mapped weight occupies.
    static func mappedRanges(_ weights: [Weight]) -> [(MappedFile, Range<Int>)] {
        weights.compactMap { w in
            guard let file = w.owner as? MappedFile, let base = file.bytes.baseAddress,
                  let start = w.bytes.baseAddress, !w.bytes.isEmpty else { return nil }
            let offset = start - base
            guard offset >= 0, offset + w.bytes.count <= file.size else { return nil }
            return (file, offset..<(offset + w.bytes.count))
        }
    }

    static func prefetch(_ weights: [Weight]) {
        for (file, range) in mappedRanges(weights) { file.willNeed(range) }
    }

    static func release(_ weights: [Weight], dropPageCache: Bool) {
        for (file, range) in mappedRanges(weights) { file.release(range, dropPageCache: dropPageCache) }
    }
}
