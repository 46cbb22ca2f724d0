// DType: element types a safetensors file can declare, with their on-disk byte sizes.

/// A tensor element type as named in safetensors headers (`"F32"`, `"BF16"`, …).
public enum DType: String, Sendable, CaseIterable, Equatable {
    case f32 = "F32"
    case f16 = "F16"
    case bf16 = "BF16"
    case f64 = "F64"
    case i64 = "I64"
    case i32 = "I32"
    case i16 = "I16"
    case i8 = "I8"
    case u8 = "U8"
    case bool = "BOOL"

    /// Parses a safetensors dtype string (case-sensitive, as the format specifies).
    public init?(safetensorsName: String) {
        self.init(rawValue: safetensorsName)
    }

    /// The safetensors header spelling (`"F16"`).
    public var safetensorsName: String { rawValue }

    /// Bytes per element.
    public var byteSize: Int {
        switch self {
        case .f64, .i64: return 8
        case .f32, .i32: return 4
        case .f16, .bf16, .i16: return 2
        case .i8, .u8, .bool: return 1
        }
    }

    /// True for the types `copyAsFloat32` can convert (F32, F16, BF16, F64).
    public var isConvertibleToFloat32: Bool {
        switch self {
        case .f32, .f16, .bf16, .f64: return true
        default: return false
        }
    }
}
