// GGUFWriter: writes GGUF v3 files with ggml's layout — header, metadata, tensor infos, zero padding to
// the alignment, then each tensor's data at an aligned offset (padded after it, as ggml does) — either
// from bytes in memory or streamed tensor by tensor to a temp file that is fsynced and renamed into place.

import Foundation

#if canImport(Glibc)
    import Glibc
#elseif canImport(Darwin)
    import Darwin
#endif

/// Builds a GGUF file. Declare metadata and tensors (in the order they will be written), then
/// `encoded()` / `write(to:)` for in-memory data, or `stream(to:)` to supply data tensor by tensor.
public struct GGUFWriter: Sendable {
    /// A declared tensor.
    public struct Tensor: Sendable {
        public let name: String
        /// PyTorch order (outermost first); written reversed as GGUF's `ne`.
        public let shape: [Int]
        public let type: TensorType
        /// Data offset relative to the data section.
        public let relativeOffset: Int
        public let byteCount: Int
        fileprivate let bytes: [UInt8]?
    }

    public let alignment: Int
    public private(set) var metadata: [(key: String, value: GGUFValue)] = []
    public private(set) var tensors: [Tensor] = []
    /// Bytes of the data section (every tensor padded to the alignment).
    public private(set) var dataSize = 0

    /// A writer; `alignment` (a power of two) other than 32 is recorded as `general.alignment`.
    public init(alignment: Int = GGUF.defaultAlignment) {
        precondition(alignment > 0 && alignment & (alignment - 1) == 0 && alignment <= 1 << 30,
                     "GGUFWriter: alignment \(alignment) is not a power of two")
        self.alignment = alignment
        if alignment != GGUF.defaultAlignment {
            metadata.append(("general.alignment", .uint32(UInt32(alignment))))
        }
    }

    /// Sets `key` (replacing an earlier value in place). `general.alignment` is managed by `init`.
    public mutating func set(_ key: String, _ value: GGUFValue) {
        precondition(key != "general.alignment", "GGUFWriter: set the alignment with init(alignment:)")
        if let i = metadata.firstIndex(where: { $0.key == key }) {
            metadata[i] = (key, value)
        } else {
            metadata.append((key, value))
        }
    }

    /// Declares a tensor whose data `stream(to:)` will ask for. Throws `WeightsError` for a
    /// duplicate name, a shape of more than 4 dims or a zero dim, or rows that are not whole blocks.
    @discardableResult
    public mutating func addTensor(_ name: String, shape: [Int], type: TensorType) throws(WeightsError) -> Tensor {
        try add(name, shape: shape, type: type, bytes: nil)
    }

    /// Adds a tensor with its stored bytes (exactly `type.byteCount(elements:)` of them).
    @discardableResult
    public mutating func addTensor(_ name: String, shape: [Int], type: TensorType, bytes: [UInt8]) throws(WeightsError)
        -> Tensor
    {
        try add(name, shape: shape, type: type, bytes: bytes)
    }

    /// Adds an F32 tensor stored as `type` (quantized with `Quantizer`).
    @discardableResult
    public mutating func addTensor(_ name: String, shape: [Int], values: [Float], as type: TensorType)
        throws(WeightsError) -> Tensor
    {
        guard type.isWritable else {
            throw WeightsError(.unsupportedDType, file: "(gguf writer)", tensor: name,
                               "\(type.name) is read only: sdd does not quantize to k-quants")
        }
        guard shape.reduce(1, *) == values.count else {
            throw WeightsError(.shapeMismatch, file: "(gguf writer)", tensor: name,
                               "\(values.count) values for shape \(shape)")
        }
        guard shape.isEmpty || (shape.last! % type.blockSize == 0) else {
            throw WeightsError(.malformed, file: "(gguf writer)", tensor: name,
                               "rows of \(shape.last!) are not whole \(type.name) blocks")
        }
        return try add(name, shape: shape, type: type, bytes: Quantizer.quantize(values, to: type))
    }

    private mutating func add(_ name: String, shape: [Int], type: TensorType, bytes: [UInt8]?) throws(WeightsError)
        -> Tensor
    {
        func fail(_ detail: String) -> WeightsError {
            WeightsError(.malformed, file: "(gguf writer)", tensor: name, detail)
        }
        guard !name.isEmpty else { throw fail("empty tensor name") }
        guard !tensors.contains(where: { $0.name == name }) else { throw fail("tensor name appears twice") }
        guard shape.count <= GGUF.maxDimensions, shape.allSatisfy({ $0 > 0 }) else {
            throw fail("shape \(shape) needs 0…4 positive dimensions")
        }
        let rowLength = shape.last ?? 1
        guard rowLength % type.blockSize == 0 else {
            throw fail("rows of \(rowLength) elements are not whole \(type.name) blocks of \(type.blockSize)")
        }
        var count = 1
        for d in shape {
            let (p, o) = count.multipliedReportingOverflow(by: d)
            guard !o else { throw fail("element count overflows") }
            count = p
        }
        guard let byteCount = type.byteCount(elements: count) else { throw fail("byte size overflows") }
        if let bytes, bytes.count != byteCount {
            throw fail("\(bytes.count) bytes given, \(type.name) \(shape) needs \(byteCount)")
        }
        let t = Tensor(name: name, shape: shape, type: type, relativeOffset: dataSize, byteCount: byteCount,
                       bytes: bytes)
        tensors.append(t)
        dataSize += Self.padded(byteCount, alignment)
        return t
    }

    static func padded(_ n: Int, _ alignment: Int) -> Int { (n + alignment - 1) / alignment * alignment }

    /// Header, metadata and tensor infos, zero-padded to the alignment: everything before the data.
    public func header() -> [UInt8] {
        var out: [UInt8] = []
        func u32(_ v: UInt32) { withUnsafeBytes(of: v.littleEndian) { out.append(contentsOf: $0) } }
        func u64(_ v: UInt64) { withUnsafeBytes(of: v.littleEndian) { out.append(contentsOf: $0) } }
        func string(_ s: String) {
            u64(UInt64(s.utf8.count))
            out.append(contentsOf: s.utf8)
        }
        func array(_ a: GGUFArray) {
            u32(a.elementType.rawValue)
            u64(UInt64(a.count))
            switch a {
            case .uint8(let v): out.append(contentsOf: v)
            case .int8(let v): for x in v { out.append(UInt8(bitPattern: x)) }
            case .uint16(let v): for x in v { withUnsafeBytes(of: x.littleEndian) { out.append(contentsOf: $0) } }
            case .int16(let v): for x in v { withUnsafeBytes(of: x.littleEndian) { out.append(contentsOf: $0) } }
            case .uint32(let v): for x in v { u32(x) }
            case .int32(let v): for x in v { u32(UInt32(bitPattern: x)) }
            case .uint64(let v): for x in v { u64(x) }
            case .int64(let v): for x in v { u64(UInt64(bitPattern: x)) }
            case .float32(let v): for x in v { u32(x.bitPattern) }
            case .float64(let v): for x in v { u64(x.bitPattern) }
            case .bool(let v): for x in v { out.append(x ? 1 : 0) }
            case .string(let v): for x in v { string(x) }
            case .array(let v): for x in v { array(x) }
            }
        }
        func value(_ v: GGUFValue) {
            switch v {
            case .uint8(let x): out.append(x)
            case .int8(let x): out.append(UInt8(bitPattern: x))
            case .uint16(let x): withUnsafeBytes(of: x.littleEndian) { out.append(contentsOf: $0) }
            case .int16(let x): withUnsafeBytes(of: x.littleEndian) { out.append(contentsOf: $0) }
            case .uint32(let x): u32(x)
            case .int32(let x): u32(UInt32(bitPattern: x))
            case .uint64(let x): u64(x)
            case .int64(let x): u64(UInt64(bitPattern: x))
            case .float32(let x): u32(x.bitPattern)
            case .float64(let x): u64(x.bitPattern)
            case .bool(let x): out.append(x ? 1 : 0)
            case .string(let s): string(s)
            case .array(let a): array(a)
            }
        }
        u32(GGUF.magic)
        u32(GGUF.version)
        u64(UInt64(tensors.count))
        u64(UInt64(metadata.count))
        for (key, v) in metadata {
            string(key)
            u32(v.type.rawValue)
            value(v)
        }
        for t in tensors {
            string(t.name)
            u32(UInt32(t.shape.count))
            for d in t.shape.reversed() { u64(UInt64(d)) }
            u32(t.type.rawValue)
            u64(UInt64(t.relativeOffset))
        }
        out.append(contentsOf: repeatElement(0, count: Self.padded(out.count, alignment) - out.count))
        return out
    }

    /// The whole file; every tensor must have been added with its bytes.
    public func encoded() throws(WeightsError) -> [UInt8] {
        var out = header()
        out.reserveCapacity(out.count + dataSize)
        for t in tensors {
            guard let bytes = t.bytes else {
                throw WeightsError(.malformed, file: "(gguf writer)", tensor: t.name, "declared without data")
            }
            out.append(contentsOf: bytes)
            out.append(contentsOf: repeatElement(0, count: Self.padded(bytes.count, alignment) - bytes.count))
        }
        return out
    }

    /// Writes `encoded()` to `url` atomically (temp file, fsync, rename).
    public func write(to url: URL) throws {
        try stream(to: url) { t, sink in
            guard let bytes = t.bytes else {
                throw WeightsError(.malformed, file: url.path, tensor: t.name, "declared without data")
            }
            try bytes.withUnsafeBytes { try sink.write($0) }
        }
    }

    /// Writes the file to `url` through a temp file in the same folder: the header, then for each
    /// declared tensor in order `produce(tensor, sink)` must write exactly `tensor.byteCount` bytes.
    /// The temp file is fsynced and renamed over `url` only when everything succeeded; on any error it
    /// is removed and `url` is untouched. Memory use is one buffer, not the model.
    public func stream(to url: URL, produce: (Tensor, GGUFDataSink) throws -> Void) throws {
        let dir = url.deletingLastPathComponent()
        let suffix = "\(getpid())-\(UInt32.random(in: 0...UInt32.max))"
        let temp = dir.appendingPathComponent(".\(url.lastPathComponent).tmp-\(suffix)")
        let sink = try GGUFDataSink(url: temp)
        var done = false
        defer {
            if !done {
                sink.close()
                unlink(temp.path)
            }
        }
        try header().withUnsafeBytes { try sink.write($0) }
        for t in tensors {
            let before = sink.written
            try produce(t, sink)
            let n = sink.written - before
            guard n == t.byteCount else {
                throw WeightsError(.malformed, file: url.path, tensor: t.name,
                                   "writer produced \(n) bytes, \(t.type.name) \(t.shape) needs \(t.byteCount)")
            }
            try sink.pad(to: alignment)
        }
        try sink.finish()
        guard rename(temp.path, url.path) == 0 else {
            throw WeightsError(.unreadable, file: url.path,
                               "cannot rename the temp file into place: \(String(cString: strerror(errno)))")
        }
        done = true
        let dfd = open(dir.path, O_RDONLY | O_DIRECTORY)
        if dfd >= 0 {
            _ = fsync(dfd)
            posixClose(dfd)
        }
    }
}

/// Buffered output for `GGUFWriter.stream`: a file descriptor plus a 4 MiB buffer.
public final class GGUFDataSink {
    private let fd: Int32
    private let path: String
    private var buffer: [UInt8] = []
    private let capacity = 4 << 20
    private var closed = false
    /// Bytes accepted so far (header included).
    public private(set) var written = 0

    init(url: URL) throws {
        path = url.path
        fd = open(url.path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0o644)
        guard fd >= 0 else {
            throw WeightsError(.unreadable, file: url.path, "cannot create: \(String(cString: strerror(errno)))")
        }
        buffer.reserveCapacity(capacity)
    }

    deinit { close() }

    /// Appends `bytes`.
    public func write(_ bytes: UnsafeRawBufferPointer) throws {
        written += bytes.count
        if buffer.count + bytes.count > capacity { try flush() }
        if bytes.count >= capacity {
            try writeAll(bytes)
        } else {
            buffer.append(contentsOf: bytes)
        }
    }

    func pad(to alignment: Int) throws {
        let n = GGUFWriter.padded(written, alignment) - written
        if n > 0 { try [UInt8](repeating: 0, count: n).withUnsafeBytes { try write($0) } }
    }

    private func writeAll(_ bytes: UnsafeRawBufferPointer) throws {
        guard var p = bytes.baseAddress else { return }
        var left = bytes.count
        while left > 0 {
            let n = posixWrite(fd, p, left)
            if n < 0 {
                if errno == EINTR { continue }
                throw WeightsError(.unreadable, file: path, "write failed: \(String(cString: strerror(errno)))")
            }
            p += n
            left -= n
        }
    }

    private func flush() throws {
        try buffer.withUnsafeBytes { try writeAll($0) }
        buffer.removeAll(keepingCapacity: true)
    }

    func finish() throws {
        try flush()
        guard fsync(fd) == 0 else {
            throw WeightsError(.unreadable, file: path, "fsync failed: \(String(cString: strerror(errno)))")
        }
        close()
    }

    func close() {
        if !closed {
            closed = true
            posixClose(fd)
        }
    }
}

// File-scope wrappers: inside GGUFDataSink the names `write` and `close` are its own methods.
private func posixWrite(_ fd: Int32, _ p: UnsafeRawPointer, _ n: Int) -> Int { write(fd, p, n) }
private func posixClose(_ fd: Int32) { _ = close(fd) }
