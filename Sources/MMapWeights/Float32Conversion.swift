// Float32Conversion: exact F16/BF16 → F32 and rounding F64 → F32 over unaligned little-endian bytes.

/// Element conversions to F32. Bit-level (no Float16 type) so it behaves the same on every
/// platform and vectorizes; checked exhaustively against Swift's Float16 in the tests.
public enum Float32Conversion {
    /// IEEE binary16 bits → Float, exact (subnormals, ±0, ±inf, NaN payloads preserved).
    @inline(__always)
    public static func halfToFloat(_ h: UInt16) -> Float {
        // After Fabian Giesen's half_to_float: shift exponent+mantissa into place, rebias, and
        // fix up inf/NaN (exponent all ones) and subnormals (renormalize with a float subtract).
        let magic = Float(bitPattern: 113 << 23)
        let shiftedExp: UInt32 = 0x7C00 << 13
        var o = UInt32(h & 0x7FFF) << 13
        let exp = shiftedExp & o
        o &+= (127 - 15) << 23
        var f: Float
        if exp == shiftedExp {
            o &+= (128 - 16) << 23
            f = Float(bitPattern: o)
        } else if exp == 0 {
            o &+= 1 << 23
            f = Float(bitPattern: o) - magic
        } else {
            f = Float(bitPattern: o)
        }
        f = Float(bitPattern: f.bitPattern | UInt32(h & 0x8000) << 16)
        return f
    }

    /// bfloat16 bits → Float (the upper 16 bits of a binary32), exact.
    @inline(__always)
    public static func bfloat16ToFloat(_ b: UInt16) -> Float {
        Float(bitPattern: UInt32(b) << 16)
    }

    /// Converts `src` (little-endian `dtype` elements) into `dst`; `dst.count` elements are written
    /// and `src` must hold at least `dst.count * dtype.byteSize` bytes. Only float dtypes.
    static func convert(_ src: UnsafeRawBufferPointer, dtype: DType, into dst: UnsafeMutableBufferPointer<Float>) {
        let n = dst.count
        guard n > 0, let s = src.baseAddress, let d = dst.baseAddress else { return }
        precondition(src.count >= n * dtype.byteSize)
        switch dtype {
        case .f32:
            // memcpy handles any alignment; the file is little-endian like every supported host.
            UnsafeMutableRawPointer(d).copyMemory(from: s, byteCount: n * 4)
            #if _endian(big)
                for i in 0..<n { d[i] = Float(bitPattern: UInt32(littleEndian: d[i].bitPattern)) }
            #endif
        case .f16:
            for i in 0..<n {
                d[i] = halfToFloat(UInt16(littleEndian: s.loadUnaligned(fromByteOffset: 2 * i, as: UInt16.self)))
            }
        case .bf16:
            for i in 0..<n {
                d[i] = bfloat16ToFloat(UInt16(littleEndian: s.loadUnaligned(fromByteOffset: 2 * i, as: UInt16.self)))
            }
        case .f64:
            for i in 0..<n {
                let bits = UInt64(littleEndian: s.loadUnaligned(fromByteOffset: 8 * i, as: UInt64.self))
                d[i] = Float(Double(bitPattern: bits))
            }
        default:
            preconditionFailure("Float32Conversion.convert: \(dtype) is not a float type")
        }
    }
}
