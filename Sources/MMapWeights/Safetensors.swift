// SafetensorsFile: a mapped .safetensors file whose header has been validated field by field
// against the file before any tensor byte is touched (format: huggingface/safetensors).

import Foundation

/// A `.safetensors` file: 8-byte little-endian header length N, N bytes of JSON header, then the
/// data section. Every header field and tensor range is checked on `init`; after that, every
/// `TensorInfo` it hands out points inside the mapping.
public struct SafetensorsFile: TensorSource {
    /// Largest JSON header accepted (the reference implementation's limit).
    public static let maxHeaderLength = 100_000_000

    /// The mapping.
    public let file: MappedFile
    /// The `__metadata__` string map (empty if absent).
    public let metadata: [String: String]
    /// Tensor names in header order.
    public let tensorNames: [String]
    /// Absolute file offsets of the data section (after the header).
    public let dataRange: Range<Int>
    private let infos: [String: TensorInfo]

    public var url: URL { file.url }
    public var displayPath: String { file.url.path }

    /// Maps and validates `url`. Throws `WeightsError` naming the file, tensor and field.
    public init(url: URL) throws(WeightsError) {
        let mapped: MappedFile
        do { mapped = try MappedFile(url: url) } catch let e as WeightsError { throw e } catch {
            throw WeightsError(.unreadable, file: url.path, "\(error)")
        }
        try self.init(mapped: mapped)
    }

    /// Validates an already mapped file.
    public init(mapped: MappedFile) throws(WeightsError) {
        let path = mapped.url.path
        func malformed(_ detail: String) -> WeightsError {
            WeightsError(.malformed, file: path, detail)
        }
        func malformed(_ tensor: String, _ detail: String) -> WeightsError {
            WeightsError(.malformed, file: path, tensor: tensor, detail)
        }
        let bytes = mapped.bytes
        let size = mapped.size
        guard size >= 8, let base = bytes.baseAddress else {
            throw malformed("file is \(size) bytes, too short for a safetensors header (8-byte length + JSON)")
        }
        let rawLength = UInt64(littleEndian: base.loadUnaligned(as: UInt64.self))
        guard rawLength > 0 else {
            throw malformed("header length is 0; expected a JSON object")
        }
        guard rawLength <= UInt64(SafetensorsFile.maxHeaderLength) else {
            throw malformed(
                "header length \(rawLength) exceeds the \(SafetensorsFile.maxHeaderLength)-byte limit "
                    + "(not a safetensors file?)")
        }
        let headerLength = Int(rawLength)
        guard headerLength <= size - 8 else {
            throw malformed(
                "header length \(headerLength) runs past the end of the file (\(size) bytes); "
                    + "the file is truncated or not a safetensors file")
        }
        let header = UnsafeRawBufferPointer(start: base + 8, count: headerLength)
        let json: HeaderJSON
        do { json = try HeaderJSON.parse(header) } catch {
            throw malformed("header is not valid JSON: \(error.message) at byte \(8 + error.offset)")
        }
        guard case .object(let entries) = json else {
            throw malformed("header is \(json.kindName), expected a JSON object")
        }
        let dataStart = 8 + headerLength
        let dataLength = size - dataStart

        var metadata: [String: String] = [:]
        var names: [String] = []
        var infos: [String: TensorInfo] = [:]
        var sawMetadata = false
        names.reserveCapacity(entries.count)
        infos.reserveCapacity(entries.count)

        for (name, value) in entries {
            if name == "__metadata__" {
                guard !sawMetadata else { throw malformed("duplicate \"__metadata__\" entry") }
                sawMetadata = true
                guard case .object(let pairs) = value else {
                    throw malformed("\"__metadata__\" is \(value.kindName), expected an object of strings")
                }
                for (k, v) in pairs {
                    guard case .string(let s) = v else {
                        throw malformed("\"__metadata__\" key \"\(k)\" is \(v.kindName), expected a string")
                    }
                    guard metadata[k] == nil else { throw malformed("\"__metadata__\" has duplicate key \"\(k)\"") }
                    metadata[k] = s
                }
                continue
            }
            guard infos[name] == nil else { throw malformed(name, "duplicate tensor name") }
            guard case .object(let fields) = value else {
                throw malformed(name, "entry is \(value.kindName), expected an object with dtype, shape, data_offsets")
            }
            var dtypeValue: HeaderJSON?
            var shapeValue: HeaderJSON?
            var offsetsValue: HeaderJSON?
            for (k, v) in fields {
                switch k {
                case "dtype", "shape", "data_offsets":
                    let seen = k == "dtype" ? dtypeValue : k == "shape" ? shapeValue : offsetsValue
                    guard seen == nil else { throw malformed(name, "duplicate field \"\(k)\"") }
                    if k == "dtype" { dtypeValue = v } else if k == "shape" { shapeValue = v } else { offsetsValue = v }
                default:
                    continue  // unknown fields are harmless; the reference reader ignores them too
                }
            }
            // dtype
            guard let dtypeValue else { throw malformed(name, "missing field \"dtype\"") }
            guard case .string(let dtypeName) = dtypeValue else {
                throw malformed(name, "dtype is \(dtypeValue.kindName), expected a string such as \"F16\"")
            }
            guard let dtype = DType(safetensorsName: dtypeName) else {
                let known = DType.allCases.map(\.safetensorsName).joined(separator: ", ")
                throw malformed(name, "unsupported dtype \"\(dtypeName)\" (supported: \(known))")
            }
            // shape
            guard let shapeValue else { throw malformed(name, "missing field \"shape\"") }
            guard case .array(let dims) = shapeValue else {
                throw malformed(name, "shape is \(shapeValue.kindName), expected an array of non-negative integers")
            }
            guard dims.count <= 16 else { throw malformed(name, "shape has \(dims.count) dimensions (at most 16)") }
            var shape: [Int] = []
            shape.reserveCapacity(dims.count)
            var elements = 1
            var overflow = false
            for d in dims {
                guard let n = d.nonNegativeInt else {
                    throw malformed(name, "shape \(shapeValue.brief): \(d.brief) is not a non-negative integer")
                }
                shape.append(n)
                let (p, o) = elements.multipliedReportingOverflow(by: n)
                elements = p
                overflow = overflow || o
            }
            let (nbytes, o2) = elements.multipliedReportingOverflow(by: dtype.byteSize)
            // A zero dimension makes the product 0 even if an earlier step overflowed.
            if shape.contains(0) {
                elements = 0
                overflow = false
            }
            guard !overflow && (elements == 0 || !o2) else {
                throw malformed(name, "shape \(shape) has too many elements")
            }
            let byteCount = elements == 0 ? 0 : nbytes
            // data_offsets
            guard let offsetsValue else { throw malformed(name, "missing field \"data_offsets\"") }
            guard case .array(let offs) = offsetsValue, offs.count == 2 else {
                throw malformed(name, "data_offsets \(offsetsValue.brief) is not a [begin, end] pair")
            }
            guard let begin = offs[0].nonNegativeInt, let end = offs[1].nonNegativeInt else {
                throw malformed(name, "data_offsets \(offsetsValue.brief) are not non-negative integers")
            }
            guard begin <= end else {
                throw malformed(name, "data_offsets [\(begin), \(end)] have begin after end")
            }
            guard end <= dataLength else {
                throw malformed(
                    name,
                    "data_offsets [\(begin), \(end)] run past the end of the data section "
                        + "(\(dataLength) bytes)")
            }
            guard end - begin == byteCount else {
                throw malformed(
                    name,
                    "data_offsets [\(begin), \(end)] span \(end - begin) bytes, but shape \(shape) "
                        + "of \(dtype.safetensorsName) needs \(byteCount)")
            }
            names.append(name)
            infos[name] = TensorInfo(
                name: name, dtype: dtype, shape: shape,
                byteRange: (dataStart + begin)..<(dataStart + end), file: mapped)
        }

        // No two tensors may share bytes (zero-length tensors share nothing).
        let sorted = infos.values.filter { !$0.byteRange.isEmpty }.sorted {
            ($0.byteRange.lowerBound, $0.name) < ($1.byteRange.lowerBound, $1.name)
        }
        for (a, b) in zip(sorted, sorted.dropFirst()) where b.byteRange.lowerBound < a.byteRange.upperBound {
            throw malformed(
                b.name,
                "data_offsets [\(b.byteRange.lowerBound - dataStart), "
                    + "\(b.byteRange.upperBound - dataStart)] overlap tensor \"\(a.name)\" "
                    + "[\(a.byteRange.lowerBound - dataStart), \(a.byteRange.upperBound - dataStart)]")
        }

        self.file = mapped
        self.metadata = metadata
        self.tensorNames = names
        self.infos = infos
        self.dataRange = dataStart..<size
    }

    public func contains(_ name: String) -> Bool { infos[name] != nil }

    /// The validated record for `name`, or nil.
    public func info(_ name: String) -> TensorInfo? { infos[name] }

    /// All records, in header order.
    public var allInfos: [TensorInfo] { tensorNames.compactMap { infos[$0] } }
}
