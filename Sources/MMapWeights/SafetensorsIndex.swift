// SafetensorsIndex: sharded diffusers/transformers weights (`*.safetensors.index.json` whose
// weight_map names the shard of each tensor); shards are mapped and validated on first use.

import Foundation
import Synchronization

/// A sharded safetensors checkpoint. Looks like one `TensorSource`; each shard is opened (mapped
/// and fully validated) the first time a tensor in it is asked for.
public final class SafetensorsIndex: TensorSource, Sendable {

    /// The index file.
    public let url: URL
    /// The index's `metadata` object, values rendered as strings (e.g. "total_size").
    public let metadata: [String: String]
    /// Tensor name → shard file name (relative to the index's directory).
    public let weightMap: [String: String]
    /// Tensor names, sorted.
    public let tensorNames: [String]
    /// Distinct shard file names, sorted.
    public let shardNames: [String]

    /// Shards opened so far, by file name.
    private let shards = Mutex<[String: SafetensorsFile]>([:])

    public var displayPath: String { url.path }

    /// Reads and validates the index JSON (not the shards). Throws `WeightsError`.
    public init(url: URL) throws(WeightsError) {
        let path = url.path
        func malformed(_ detail: String) -> WeightsError { WeightsError(.malformed, file: path, detail) }
        let mapped: MappedFile
        do { mapped = try MappedFile(url: url) } catch let e as WeightsError { throw e } catch {
            throw WeightsError(.unreadable, file: path, "\(error)")
        }
        guard mapped.size <= SafetensorsFile.maxHeaderLength else {
            throw malformed(
                "index is \(mapped.size) bytes, larger than the \(SafetensorsFile.maxHeaderLength)-byte limit")
        }
        guard mapped.size > 0 else { throw malformed("index file is empty") }
        let json: HeaderJSON
        do { json = try HeaderJSON.parse(mapped.bytes) } catch {
            throw malformed("not valid JSON: \(error.message) at byte \(error.offset)")
        }
        guard case .object(let top) = json else { throw malformed("index is \(json.kindName), expected a JSON object") }
        var metadata: [String: String] = [:]
        var weightMap: [String: String]?
        for (key, value) in top {
            switch key {
            case "metadata":
                guard case .object(let pairs) = value else {
                    throw malformed("\"metadata\" is \(value.kindName), expected an object")
                }
                for (k, v) in pairs {
                    switch v {
                    case .string(let s): metadata[k] = s
                    case .number(let n): metadata[k] = n
                    case .bool(let b): metadata[k] = b ? "true" : "false"
                    default: continue
                    }
                }
            case "weight_map":
                guard weightMap == nil else { throw malformed("duplicate \"weight_map\"") }
                guard case .object(let pairs) = value else {
                    throw malformed("\"weight_map\" is \(value.kindName), expected an object of tensor → shard file")
                }
                var map: [String: String] = [:]
                for (name, v) in pairs {
                    guard case .string(let shard) = v else {
                        throw WeightsError(
                            .malformed, file: path, tensor: name,
                            "weight_map value is \(v.kindName), expected a shard file name")
                    }
                    guard SafetensorsIndex.isSafeRelativePath(shard) else {
                        throw WeightsError(
                            .malformed, file: path, tensor: name,
                            "weight_map shard \"\(shard)\" is not a relative path inside the model folder")
                    }
                    guard map[name] == nil else {
                        throw WeightsError(.malformed, file: path, tensor: name, "duplicate tensor name in weight_map")
                    }
                    map[name] = shard
                }
                weightMap = map
            default:
                continue
            }
        }
        guard let weightMap else { throw malformed("missing \"weight_map\"") }
        self.url = url
        self.metadata = metadata
        self.weightMap = weightMap
        self.tensorNames = weightMap.keys.sorted()
        self.shardNames = Set(weightMap.values).sorted()
    }

    /// A shard path must stay inside the index's directory: relative, no "..", no NUL.
    static func isSafeRelativePath(_ p: String) -> Bool {
        guard !p.isEmpty, !p.hasPrefix("/"), !p.utf8.contains(0) else { return false }
        return !p.split(separator: "/", omittingEmptySubsequences: false).contains { $0 == ".." || $0.isEmpty }
    }

    public func contains(_ name: String) -> Bool { weightMap[name] != nil }

    /// The shard `shardName` (a value of `weightMap`), mapped and validated on first use.
    public func shard(named shardName: String) throws(WeightsError) -> SafetensorsFile {
        let shardURL = url.deletingLastPathComponent().appendingPathComponent(shardName)
        return try shards.withLock { (shards) throws(WeightsError) -> SafetensorsFile in
            if let s = shards[shardName] { return s }
            let s = try SafetensorsFile(url: shardURL)
            shards[shardName] = s
            return s
        }
    }

    /// Opens and validates every shard now (e.g. at model load, to fail early).
    public func openAllShards() throws(WeightsError) {
        for name in shardNames { _ = try shard(named: name) }
    }

    /// The record for `name`, opening its shard if needed; nil if the index does not list it.
    /// Throws if the shard cannot be opened or does not contain the tensor the index promises.
    public func info(_ name: String) throws(WeightsError) -> TensorInfo? {
        guard let shardName = weightMap[name] else { return nil }
        let s = try shard(named: shardName)
        guard let i = s.info(name) else {
            throw WeightsError(
                .malformed, file: url.path, tensor: name,
                "weight_map says the tensor is in \"\(shardName)\", but that shard does not contain it")
        }
        return i
    }
}
