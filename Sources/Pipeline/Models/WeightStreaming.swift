// WeightStreaming: keeps resident weights near one module. Before a weight group runs, the next one's pages
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

/// A weight group by identity: part `part` of block `block` in a network's list of blocks.
struct WeightGroupID: Hashable, Sendable {
    let block: Int
    let part: Int
}

/// Streams a network's weight groups, block by block as the network's own list declares them: running a group
/// prefetches the group after it in that list and releases the group itself.
final class WeightStreamer: @unchecked Sendable {
    // @unchecked: used by the single thread that runs the model; `onRun` is only set by tests.
    let residency: WeightResidency
    /// Each block's weight groups, in the order of the network's list of blocks.
    private let blocks: [[[Weight]]]
    /// Every group's identity in list order (for `next(after:)`).
    private let ids: [WeightGroupID]
    private let position: [WeightGroupID: Int]
    /// Called with each group as it runs (tests check the forward pass visits the list in order).
    var onRun: ((WeightGroupID) -> Void)?

    /// A streamer that only runs bodies (for modules used without streaming).
    static let none = WeightStreamer(blocks: [], residency: .resident)

    /// blocks: each block's weight groups, as the network's list of blocks declares them.
    init(blocks: [[[Weight]]], residency: WeightResidency) {
        self.blocks = blocks
        self.residency = residency
        ids = blocks.indices.flatMap { b in blocks[b].indices.map { WeightGroupID(block: b, part: $0) } }
        position = Dictionary(uniqueKeysWithValues: ids.enumerated().map { ($1, $0) })
    }

    /// The weights of group `id`.
    func weights(_ id: WeightGroupID) -> [Weight] { blocks[id.block][id.part] }

    /// The group after `id` in the list (nil after the last).
    func next(after id: WeightGroupID) -> WeightGroupID? {
        guard let i = position[id], i + 1 < ids.count else { return nil }
        return ids[i + 1]
    }

    /// Runs group `id`'s work: prefetches the group after it (and `id` itself when it is the first), runs
    /// `body`, releases `id`'s pages.
    func run<T>(_ id: WeightGroupID, _ body: () throws -> T) rethrows -> T {
        onRun?(id)
        guard residency != .resident, position[id] != nil else { return try body() }
        if id == ids.first { WeightStreamer.prefetch(weights(id)) }
        if let next = next(after: id) { WeightStreamer.prefetch(weights(next)) }
        let result = try body()
        WeightStreamer.release(weights(id), dropPageCache: residency == .strict)
        return result
    }

    /// Every group's identity, in list order.
    var groupIDs: [WeightGroupID] { ids }

    private var allGroups: [[Weight]] { blocks.flatMap { $0 } }

    /// Bytes of all groups.
    var totalBytes: Int { allGroups.reduce(0) { $0 + $1.reduce(0) { $0 + $1.bytes.count } } }

    /// Values in the largest single weight.
    var largestWeightElements: Int { allGroups.joined().map(\.count).max() ?? 0 }

    /// Bytes of LoRA-merged weights (`LoRAApplication.merge`): anonymous memory that streaming cannot release.
    var mergedBytes: Int { allGroups.joined().filter { $0.owner is MergedBytes }.reduce(0) { $0 + $1.bytes.count } }

    /// Bytes of the largest group.
    var largestGroupBytes: Int { allGroups.map { $0.reduce(0) { $0 + $1.bytes.count } }.max() ?? 0 }

    /// Bytes of F32 weights (read in place, so resident while their group runs) in the group that has most.
    var largestGroupF32Bytes: Int {
        allGroups.map { $0.filter { $0.type == .f32 }.reduce(0) { $0 + $1.bytes.count } }.max() ?? 0
    }

    /// The most bytes per value of any typed (non-F32) weight.
    var typedBytesPerValue: Double {
        allGroups.joined().filter { $0.type != .f32 && $0.count > 0 }.map { Double($0.bytes.count) / Double($0.count) }
            .max() ?? 0
    }

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

/// Runs one block's weight groups by identity: `run(part) { … }` streams group `part` of the block the runner
/// was made for. A block's forward names its own groups, in the order its `groups` declares them.
struct GroupRunner {
    let streamer: WeightStreamer
    let block: Int

    /// A runner that only runs bodies (a block used on its own, or inside a group its caller streams).
    static let unstreamed = GroupRunner(streamer: .none, block: 0)

    func callAsFunction<T>(_ part: Int, _ body: () throws -> T) rethrows -> T {
        try streamer.run(WeightGroupID(block: block, part: part), body)
    }
}
