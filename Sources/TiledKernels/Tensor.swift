// Tensor: the dense F32 activation type every kernel reads and writes.
// Row-major; images are NCHW, token sequences are [batch, tokens, channels].

import MMapWeights

/// A dense, row-major F32 tensor with value semantics: copies share storage until one of them writes
/// (copy-on-write). Large tensors' storage comes from `TensorMemory`'s block pool.
public struct Tensor: Sendable {
    /// Extent of each dimension, outermost first.
    public var shape: [Int]
    private var storage: TensorStorage

    /// A tensor whose values are unspecified, for kernels that write every element: skips the zero-filling
    /// pass over memory that the kernel is about to overwrite anyway. Float is a trivial type, so no value
    /// is ever read before it is written.
    public init(uninitialized shape: [Int]) {
        self.shape = shape
        self.storage = TensorStorage(uninitializedCount: shape.reduce(1, *))
    }

    /// A tensor of zeros.
    public init(zeros shape: [Int]) {
        self.init(uninitialized: shape)
        storage.pointer.initialize(repeating: 0, count: storage.count)
    }

    /// A copy of `data`; `data.count` must equal the product of `shape`.
    public init(shape: [Int], data: [Float]) {
        precondition(data.count == shape.reduce(1, *), "Tensor: \(data.count) values for shape \(shape)")
        self.init(uninitialized: shape)
        data.withUnsafeBufferPointer { storage.pointer.update(from: $0.baseAddress!, count: $0.count) }
    }

    /// Number of elements.
    public var count: Int { storage.count }

    /// The values as an array (a copy: read it once, not element by element in a loop).
    public var data: [Float] { withUnsafeBufferPointer { Array($0) } }

    /// Element `i` in row-major order.
    public subscript(i: Int) -> Float {
        get {
            precondition(i >= 0 && i < count, "Tensor: index \(i) out of \(count)")
            return storage.pointer[i]
        }
        set {
            precondition(i >= 0 && i < count, "Tensor: index \(i) out of \(count)")
            makeUnique()
            storage.pointer[i] = newValue
        }
    }

    /// Calls `body` with the values.
    public func withUnsafeBufferPointer<R>(_ body: (UnsafeBufferPointer<Float>) throws -> R) rethrows -> R {
        try body(UnsafeBufferPointer(start: storage.pointer, count: storage.count))
    }

    /// Calls `body` with the values to write, after copying them if another tensor shares them.
    public mutating func withUnsafeMutableBufferPointer<R>(
        _ body: (inout UnsafeMutableBufferPointer<Float>) throws -> R
    ) rethrows -> R {
        makeUnique()
        var buffer = UnsafeMutableBufferPointer(start: storage.pointer, count: storage.count)
        return try body(&buffer)
    }

    private mutating func makeUnique() {
        if isKnownUniquelyReferenced(&storage) { return }
        let copy = TensorStorage(uninitializedCount: storage.count)
        copy.pointer.update(from: storage.pointer, count: storage.count)
        storage = copy
    }

    /// The same values seen with another shape of equal element count (no copy).
    public func reshaped(_ newShape: [Int]) -> Tensor {
        precondition(newShape.reduce(1, *) == count, "Tensor: cannot view \(shape) as \(newShape)")
        var t = self
        t.shape = newShape
        return t
    }

    /// Items `range` of the outermost dimension (e.g. one half of a guidance batch).
    public func slice(batch range: Range<Int>) -> Tensor {
        let inner = shape.dropFirst().reduce(1, *)
        var s = shape
        s[0] = range.count
        let out = Tensor(uninitialized: s)
        out.storage.pointer.update(from: storage.pointer + range.lowerBound * inner, count: range.count * inner)
        return out
    }

    /// Concatenates tensors of equal inner shape along the outermost dimension.
    public static func stack(batches parts: [Tensor]) -> Tensor {
        precondition(!parts.isEmpty)
        var s = parts[0].shape
        s[0] = parts.reduce(0) { $0 + $1.shape[0] }
        let out = Tensor(uninitialized: s)
        var offset = 0
        for p in parts {
            precondition(Array(p.shape.dropFirst()) == Array(s.dropFirst()), "stack: shape mismatch")
            out.storage.pointer.advanced(by: offset).update(from: p.storage.pointer, count: p.count)
            offset += p.count
        }
        return out
    }
}

/// A read-only weight in its stored type (F32, F16, BF16 or a ggml block quantization): a view into a
/// mapped file, or into storage kept alive by `owner`. Kernels dequantize panels of rows as they go.
/// Rows are the outermost dimension: a [out, in] matrix or an [out, in, kh, kw] conv kernel has `out`
/// rows of `rowLength` elements, and quantized blocks run along each row.
public struct Weight: @unchecked Sendable {
    /// Extent of each dimension as stored (PyTorch order, e.g. [out, in] or [out, in, kh, kw]).
    public let shape: [Int]
    public let type: TensorType
    /// The stored bytes (`type.byteCount(elements: count)` of them).
    public let bytes: UnsafeRawBufferPointer
    /// Whatever keeps `bytes` valid (a mapping, a box); nil for static data.
    public let owner: AnyObject?
    /// How the products with this weight multiply (linear layers and convolutions); F32 unless the model
    /// asks for BF16 (see `ProductPrecision`).
    public var products: ProductPrecision = .f32

    /// A weight of any type; `bytes` must hold exactly the elements of `shape` in `type`'s layout.
    public init(shape: [Int], type: TensorType, bytes: UnsafeRawBufferPointer, owner: AnyObject?) {
        let count = shape.reduce(1, *)
        precondition(type.byteCount(elements: count) == bytes.count,
                     "Weight: \(bytes.count) bytes for \(type.name) shape \(shape)")
        let rowLength = shape.dropFirst().reduce(1, *)
        precondition(!type.isQuantized || rowLength % type.blockSize == 0,
                     "Weight: \(type.name) rows of \(rowLength) are not whole blocks")
        self.shape = shape
        self.type = type
        self.bytes = bytes
        self.owner = owner
    }

    /// An F32 weight over `values`.
    public init(shape: [Int], values: UnsafeBufferPointer<Float>, owner: AnyObject?) {
        self.init(shape: shape, type: .f32, bytes: UnsafeRawBufferPointer(values), owner: owner)
    }

    /// An F32 weight that owns a copy of `array`.
    public init(shape: [Int], array: [Float]) {
        let box = WeightBox(array)
        self.init(shape: shape, values: UnsafeBufferPointer(box.pointer), owner: box)
    }

    public var count: Int { shape.reduce(1, *) }
    /// Rows: the outermost dimension (1 for a scalar).
    public var rows: Int { shape.first ?? 1 }
    /// Elements per row: the product of the inner dimensions.
    public var rowLength: Int { shape.dropFirst().reduce(1, *) }

    /// The F32 values; only for `type == .f32`.
    public var values: UnsafeBufferPointer<Float> {
        precondition(type == .f32, "Weight.values on a \(type.name) weight; use dequantizeRows")
        return bytes.bindMemory(to: Float.self)
    }

    public var base: UnsafePointer<Float> { values.baseAddress ?? UnsafePointer(bitPattern: 16)! }

    /// The same bytes seen with another shape of equal element count and whole blocks per row.
    public func reshaped(_ newShape: [Int]) -> Weight {
        var w = Weight(shape: newShape, type: type, bytes: bytes, owner: owner)
        w.products = products
        return w
    }

    /// The same weight, multiplied with `precision` in products.
    public func multiplying(in precision: ProductPrecision) -> Weight {
        var w = self
        w.products = precision
        return w
    }

    /// Decodes rows `range` (each `rowLength` elements) to F32 into `destination` with the type table's
    /// decoder (`TensorType.dequantize`: vectorized where the CPU allows, ggml's values bit for bit).
    public func dequantizeRows(_ range: Range<Int>, into destination: UnsafeMutablePointer<Float>) {
        precondition(range.lowerBound >= 0 && range.upperBound <= rows)
        guard let base = bytes.baseAddress, !range.isEmpty else { return }
        let rowBytes = (rowLength / type.blockSize) * type.blockBytes
        let source = base + range.lowerBound * rowBytes
        let count = range.count * rowLength
        type.dequantize(source, count: count, into: destination)
    }

    /// All values as F32 (a copy), for small weights and tests.
    public func dequantized() -> [Float] {
        var out = [Float](repeating: 0, count: count)
        out.withUnsafeMutableBufferPointer { dequantizeRows(0..<rows, into: $0.baseAddress!) }
        return out
    }
}

/// Owns F32 storage for a `Weight` that is not backed by a mapping (converted F16/BF16 data).
public final class WeightBox {
    public let pointer: UnsafeMutableBufferPointer<Float>
    public init(count: Int) {
        let start = UnsafeMutablePointer<Float>.allocate(capacity: max(count, 1))
        start.initialize(repeating: 0, count: max(count, 1))
        pointer = UnsafeMutableBufferPointer(start: start, count: count)
    }
    public convenience init(_ array: [Float]) {
        self.init(count: array.count)
        _ = pointer.initialize(from: array)
    }
    deinit { pointer.baseAddress?.deallocate() }
}
