// TensorType: the storage types a weight can have — ggml's type ids and exact block byte layouts
// (F32, F16, BF16, Q8_0, Q4_0, Q4_1, Q5_0, Q5_1; read-only k-quants Q4_K, Q5_K, Q6_K) — and the
// reference dequantization of a row.
// This is the one table of block formats; kernels dequantize through it and never know the layouts.

/// A weight storage type with ggml's numbering and byte layout.
public enum TensorType: UInt32, Sendable, CaseIterable, Codable {
    case f32 = 0
    case f16 = 1
    case q4_0 = 2
    case q4_1 = 3
    case q5_0 = 6
    case q5_1 = 7
    case q8_0 = 8
    /// k-quants (super-blocks of 256): read from stable-diffusion.cpp / llama.cpp files, never written.
    case q4_K = 12
    case q5_K = 13
    case q6_K = 14
    case bf16 = 30

    /// Elements per block (1 for the float types, 32 for the quantized ones).
    public var blockSize: Int {
        switch self {
        case .f32, .f16, .bf16: return 1
        case .q4_0, .q4_1, .q5_0, .q5_1, .q8_0: return 32
        case .q4_K, .q5_K, .q6_K: return 256
        }
    }

    /// Bytes per block.
    public var blockBytes: Int {
        switch self {
        case .f32: return 4
        case .f16, .bf16: return 2
        case .q4_0: return 18   // f16 d, 16 bytes of nibbles
        case .q4_1: return 20   // f16 d, f16 m, 16 bytes of nibbles
        case .q5_0: return 22   // f16 d, u32 high bits, 16 bytes of nibbles
        case .q5_1: return 24   // f16 d, f16 m, u32 high bits, 16 bytes of nibbles
        case .q8_0: return 34   // f16 d, 32 int8
        case .q4_K: return 144  // f16 d, f16 dmin, 12 bytes of 6-bit scales/mins, 128 bytes of nibbles
        case .q5_K: return 176  // f16 d, f16 dmin, 12 bytes of scales/mins, 32 bytes of high bits, 128 of nibbles
        case .q6_K: return 210  // 128 bytes low nibbles, 64 bytes high 2 bits, 16 int8 scales, f16 d
        }
    }

    public var isQuantized: Bool { blockSize > 1 }

    /// The lower-case name users type and ggml prints (q8_0, f16 …).
    public var name: String {
        switch self {
        case .f32: return "f32"
        case .f16: return "f16"
        case .bf16: return "bf16"
        case .q4_0: return "q4_0"
        case .q4_1: return "q4_1"
        case .q5_0: return "q5_0"
        case .q5_1: return "q5_1"
        case .q8_0: return "q8_0"
        case .q4_K: return "q4_k"
        case .q5_K: return "q5_k"
        case .q6_K: return "q6_k"
        }
    }

    /// Whether sdd can write this type (`sdd convert --type`); the k-quants are read only.
    public var isWritable: Bool { blockSize <= 32 }

    public init?(name: String) {
        guard let t = TensorType.allCases.first(where: { $0.name == name.lowercased() }) else { return nil }
        self = t
    }

    /// Bytes needed for `count` elements (count must be a multiple of blockSize), or nil on overflow.
    public func byteCount(elements count: Int) -> Int? {
        guard count >= 0, count % blockSize == 0 else { return nil }
        let (bytes, overflow) = (count / blockSize).multipliedReportingOverflow(by: blockBytes)
        return overflow ? nil : bytes
    }

    /// Decodes `count` elements (a multiple of blockSize) starting at `source` into `destination`.
    /// Reference implementation, block by block, exactly as ggml's dequantize_row_* functions.
    public func dequantize(_ source: UnsafeRawPointer, count: Int, into destination: UnsafeMutablePointer<Float>) {
        func half(_ p: UnsafeRawPointer, _ offset: Int) -> Float {
            Float32Conversion.halfToFloat(UInt16(littleEndian: p.loadUnaligned(fromByteOffset: offset, as: UInt16.self)))
        }
        switch self {
        case .f32:
            UnsafeMutableRawPointer(destination).copyMemory(from: source, byteCount: count * 4)
        case .f16:
            for i in 0..<count { destination[i] = half(source, 2 * i) }
        case .bf16:
            for i in 0..<count {
                destination[i] = Float32Conversion.bfloat16ToFloat(
                    UInt16(littleEndian: source.loadUnaligned(fromByteOffset: 2 * i, as: UInt16.self)))
            }
        case .q8_0:
            for b in 0..<(count / 32) {
                let block = source + b * 34
                let d = half(block, 0)
                let qs = (block + 2).assumingMemoryBound(to: Int8.self)
                let y = destination + b * 32
                for j in 0..<32 { y[j] = Float(qs[j]) * d }
            }
        case .q4_0, .q4_1:
            let hasMin = self == .q4_1
            for b in 0..<(count / 32) {
                let block = source + b * blockBytes
                let d = half(block, 0)
                let m: Float = hasMin ? half(block, 2) : 0
                let qs = (block + (hasMin ? 4 : 2)).assumingMemoryBound(to: UInt8.self)
                let y = destination + b * 32
                for j in 0..<16 {
                    let lo = Int32(qs[j] & 0x0F), hi = Int32(qs[j] >> 4)
                    if hasMin {
                        y[j] = Float(lo) * d + m
                        y[j + 16] = Float(hi) * d + m
                    } else {
                        y[j] = Float(lo - 8) * d
                        y[j + 16] = Float(hi - 8) * d
                    }
                }
            }
        case .q5_0, .q5_1:
            let hasMin = self == .q5_1
            for b in 0..<(count / 32) {
                let block = source + b * blockBytes
                let d = half(block, 0)
                let m: Float = hasMin ? half(block, 2) : 0
                let qhOffset = hasMin ? 4 : 2
                let qh = UInt32(littleEndian: block.loadUnaligned(fromByteOffset: qhOffset, as: UInt32.self))
                let qs = (block + qhOffset + 4).assumingMemoryBound(to: UInt8.self)
                let y = destination + b * 32
                for j in 0..<16 {
                    let xh0 = Int32(((qh >> UInt32(j)) << 4) & 0x10)
                    let xh1 = Int32((qh >> UInt32(j + 12)) & 0x10)
                    let x0 = Int32(qs[j] & 0x0F) | xh0
                    let x1 = Int32(qs[j] >> 4) | xh1
                    if hasMin {
                        y[j] = Float(x0) * d + m
                        y[j + 16] = Float(x1) * d + m
                    } else {
                        y[j] = Float(x0 - 16) * d
                        y[j + 16] = Float(x1 - 16) * d
                    }
                }
            }
        case .q4_K, .q5_K:
            // ggml's dequantize_row_q4_K / _q5_K: 8 sub-blocks of 32 with 6-bit scales and mins.
            let five = self == .q5_K
            for b in 0..<(count / 256) {
                let block = source + b * blockBytes
                let d = half(block, 0), dmin = half(block, 2)
                let scales = (block + 4).assumingMemoryBound(to: UInt8.self)
                let qh = (block + 16).assumingMemoryBound(to: UInt8.self)
                var q = (block + (five ? 48 : 16)).assumingMemoryBound(to: UInt8.self)
                var y = destination + b * 256
                var u1: UInt8 = 1, u2: UInt8 = 2
                for pair in 0..<4 {
                    let (sc1, m1) = TensorType.scaleMinK4(2 * pair, scales)
                    let (sc2, m2) = TensorType.scaleMinK4(2 * pair + 1, scales)
                    let d1 = d * Float(sc1), min1 = dmin * Float(m1)
                    let d2 = d * Float(sc2), min2 = dmin * Float(m2)
                    for l in 0..<32 {
                        let high: UInt8 = five && (qh[l] & u1) != 0 ? 16 : 0
                        y[l] = d1 * Float((q[l] & 0x0F) + high) - min1
                    }
                    for l in 0..<32 {
                        let high: UInt8 = five && (qh[l] & u2) != 0 ? 16 : 0
                        y[32 + l] = d2 * Float((q[l] >> 4) + high) - min2
                    }
                    q += 32
                    y += 64
                    u1 <<= 2
                    u2 <<= 2
                }
            }
        case .q6_K:
            // ggml's dequantize_row_q6_K: 16 sub-blocks of 16 with int8 scales.
            for b in 0..<(count / 256) {
                let block = source + b * 210
                let d = half(block, 208)
                var ql = block.assumingMemoryBound(to: UInt8.self)
                var qh = (block + 128).assumingMemoryBound(to: UInt8.self)
                var sc = (block + 192).assumingMemoryBound(to: Int8.self)
                var y = destination + b * 256
                for _ in 0..<2 {
                    for l in 0..<32 {
                        let s = l / 16
                        let q1 = Int32((ql[l] & 0x0F) | (((qh[l] >> 0) & 3) << 4)) - 32
                        let q2 = Int32((ql[l + 32] & 0x0F) | (((qh[l] >> 2) & 3) << 4)) - 32
                        let q3 = Int32((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) - 32
                        let q4 = Int32((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) - 32
                        y[l] = d * Float(sc[s]) * Float(q1)
                        y[l + 32] = d * Float(sc[s + 2]) * Float(q2)
                        y[l + 64] = d * Float(sc[s + 4]) * Float(q3)
                        y[l + 96] = d * Float(sc[s + 6]) * Float(q4)
                    }
                    y += 128
                    ql += 64
                    qh += 32
                    sc += 8
                }
            }
        }
    }

    /// ggml's get_scale_min_k4: the j-th 6-bit scale and min of a Q4_K/Q5_K super-block.
    static func scaleMinK4(_ j: Int, _ q: UnsafePointer<UInt8>) -> (UInt8, UInt8) {
        if j < 4 { return (q[j] & 63, q[j + 4] & 63) }
        return ((q[j + 4] & 0x0F) | ((q[j - 4] >> 6) << 4), (q[j + 4] >> 4) | ((q[j] >> 6) << 4))
    }
}
