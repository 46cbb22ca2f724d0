// Tensor: the dense F32 activation type every kernel reads and writes.
// Row-major; images are NCHW, token sequences are [batch, tokens, channels].

/// A dense, row-major F32 tensor with value semantics (copy-on-write through its array).
public struct Tensor: Sendable {
    /// Extent of each dimension, outermost first.
    public var shape: [Int]
    /// `shape.reduce(1, *)` elements, row-major.
    public var data: [Float]

    /// A tensor of zeros.
    public init(zeros shape: [Int]) {
        self.shape = shape
        self.data = [Float](repeating: 0, count: shape.reduce(1, *))
    }

    /// Wraps `data`; `data.count` must equal the product of `shape`.
    public init(shape: [Int], data: [Float]) {
        precondition(data.count == shape.reduce(1, *), "Tensor: \(data.count) values for shape \(shape)")
        self.shape = shape
        self.data = data
    }

    /// Number of elements.
    public var count: Int { data.count }

    /// The same values seen with another shape of equal element count.
    public func reshaped(_ newShape: [Int]) -> Tensor {
        Tensor(shape: newShape, data: data)
    }

    /// Items `range` of the outermost dimension (e.g. one half of a guidance batch).
    public func slice(batch range: Range<Int>) -> Tensor {
        let inner = shape.dropFirst().reduce(1, *)
        var s = shape
        s[0] = range.count
        return Tensor(shape: s, data: Array(data[(range.lowerBound * inner)..<(range.upperBound * inner)]))
    }

    /// Concatenates tensors of equal inner shape along the outermost dimension.
    public static func stack(batches parts: [Tensor]) -> Tensor {
        precondition(!parts.isEmpty)
        var s = parts[0].shape
        s[0] = parts.reduce(0) { $0 + $1.shape[0] }
        var d = [Float]()
        d.reserveCapacity(s.reduce(1, *))
        for p in parts {
            precondition(Array(p.shape.dropFirst()) == Array(s.dropFirst()), "stack: shape mismatch")
            d.append(contentsOf: p.data)
        }
        return Tensor(shape: s, data: d)
    }
}

/// A read-only F32 weight: a pointer into a mapped file or into storage kept alive by `owner`.
public struct Weight: @unchecked Sendable {
    /// Extent of each dimension as stored (PyTorch order, e.g. [out, in] or [out, in, kh, kw]).
    public let shape: [Int]
    /// `shape.reduce(1, *)` values.
    public let values: UnsafeBufferPointer<Float>
    /// Whatever keeps `values` valid (a mapping, an array box); nil for static data.
    public let owner: AnyObject?

    public init(shape: [Int], values: UnsafeBufferPointer<Float>, owner: AnyObject?) {
        precondition(values.count == shape.reduce(1, *), "Weight: \(values.count) values for shape \(shape)")
        self.shape = shape
        self.values = values
        self.owner = owner
    }

    /// A weight that owns a copy of `array`.
    public init(shape: [Int], array: [Float]) {
        let box = WeightBox(array)
        self.init(shape: shape, values: UnsafeBufferPointer(box.pointer), owner: box)
    }

    public var count: Int { values.count }
    public var base: UnsafePointer<Float> { values.baseAddress! }
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
