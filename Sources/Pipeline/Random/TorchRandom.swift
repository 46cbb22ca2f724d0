// Torch-compatible CPU random numbers: mt19937 seeded like torch.Generator("cpu").manual_seed(seed)
// and torch.randn for float32 (aten/src/ATen/native/cpu/DistributionTemplates.h, normal_fill).
import TiledKernels

#if canImport(Glibc)
    import Glibc
#elseif canImport(Darwin)
    import Darwin
#endif

/// A value-type copy of torch's CPU generator (`at::CPUGeneratorImpl`): its mt19937 state plus the
/// cached second Box–Muller sample of the scalar path. Codable, so a generation can be
/// checkpointed and resumed mid-stream.
public struct TorchRandom: Codable, Sendable, Equatable {
    /// How torch turns 16 uniforms into 16 normals for tensors of >= 16 elements.
    public enum BoxMuller: String, Codable, Sendable {
        /// x86 builds (CPU capability AVX2 or AVX512): the AVX2 kernel with Cephes-style
        /// `log256_ps` / `sincos256_ps` (avx_mathfun.h). What torch does on Linux/Windows PCs.
        case avx2
        /// The scalar kernel (std::log/cos/sin in float): torch on ARM (Apple silicon) or with
        /// ATEN_CPU_CAPABILITY=default. Differs from `.avx2` by at most a few 1e-7.
        case scalar

        /// torch's choice on the machine this runs on.
        public static var native: BoxMuller {
            #if arch(x86_64)
                return .avx2
            #else
                return .scalar
            #endif
        }
    }

    /// The seed given to `init(seed:)`.
    public private(set) var seed: UInt64
    public var boxMuller: BoxMuller
    private var state: [UInt32]
    private var next: Int
    private var left: Int
    /// torch's `next_double_normal_sample_`: the sin half of the last scalar-path Box–Muller pair.
    private var cachedNormal: Double?

    private static let n = 624
    private static let m = 397

    /// `torch.Generator("cpu").manual_seed(seed)`: mt19937 initialised with the low 32 bits of `seed`.
    /// `boxMuller` defaults to what torch does on this CPU architecture.
    public init(seed: UInt64, boxMuller: BoxMuller = .native) {
        self.seed = seed
        self.boxMuller = boxMuller
        var s = [UInt32](repeating: 0, count: Self.n)
        s[0] = UInt32(truncatingIfNeeded: seed)
        for j in 1..<Self.n {
            s[j] = 1_812_433_253 &* (s[j - 1] ^ (s[j - 1] >> 30)) &+ UInt32(j)
        }
        state = s
        next = 0
        left = 1
        cachedNormal = nil
    }

    /// One 32-bit output of the engine (`CPUGeneratorImpl::random`).
    public mutating func nextUInt32() -> UInt32 {
        left -= 1
        if left == 0 { twist() }
        var y = state[next]
        next += 1
        y ^= y >> 11
        y ^= (y << 7) & 0x9d2c_5680
        y ^= (y << 15) & 0xefc6_0000
        y ^= y >> 18
        return y
    }

    /// `CPUGeneratorImpl::random64`: two outputs, the first in the high half.
    public mutating func nextUInt64() -> UInt64 {
        let hi = UInt64(nextUInt32())
        let lo = UInt64(nextUInt32())
        return hi << 32 | lo
    }

    private mutating func twist() {
        let n = Self.n
        let m = Self.m
        state.withUnsafeMutableBufferPointer { p in
            @inline(__always) func mix(_ u: UInt32, _ v: UInt32) -> UInt32 {
                let bits = (u & 0x8000_0000) | (v & 0x7fff_ffff)
                return (bits >> 1) ^ ((v & 1) != 0 ? 0x9908_b0df : 0)
            }
            for k in 0..<(n - m) { p[k] = p[k + m] ^ mix(p[k], p[k + 1]) }
            for k in (n - m)..<(n - 1) { p[k] = p[k + m - n] ^ mix(p[k], p[k + 1]) }
            p[n - 1] = p[m - 1] ^ mix(p[n - 1], p[0])
        }
        left = n
        next = 0
    }

    /// `at::uniform_real_distribution<float>(0, 1)`: 24 random bits / 2^24, in [0, 1).
    @inline(__always) private mutating func uniformFloat() -> Float {
        Float(nextUInt32() & 0xff_ffff) * (1.0 / 16_777_216.0)
    }

    /// `at::uniform_real_distribution<double>(0, 1)`: 53 random bits / 2^53.
    @inline(__always) private mutating func uniformDouble() -> Double {
        Double(nextUInt64() & 0x1f_ffff_ffff_ffff) * (1.0 / 9_007_199_254_740_992.0)
    }

    /// `torch.randn(shape, generator=g)` in float32 (mean 0, std 1). Consecutive calls continue the
    /// stream exactly as consecutive torch calls on one generator do.
    public mutating func randn(_ shape: [Int]) -> Tensor {
        Tensor(shape: shape, data: normal(count: shape.reduce(1, *)))
    }

    /// `count` standard normals, in torch's order.
    public mutating func normal(count: Int) -> [Float] {
        if count <= 0 { return [] }
        if count < 16 {
            // Scalar path: at::normal_distribution<double> with the cached second sample.
            var out = [Float](repeating: 0, count: count)
            for i in 0..<count { out[i] = Float(normalDouble()) }
            return out
        }
        var data = [Float](repeating: 0, count: count)
        for i in 0..<count { data[i] = uniformFloat() }
        let variant = boxMuller
        data.withUnsafeMutableBufferPointer { p in
            var i = 0
            while i + 16 <= count {
                Self.fill16(p.baseAddress! + i, variant)
                i += 16
            }
        }
        if count % 16 != 0 {
            // torch redraws the last 16 values (overlapping the previous block).
            var tail = [Float](repeating: 0, count: 16)
            for j in 0..<16 { tail[j] = uniformFloat() }
            tail.withUnsafeMutableBufferPointer { Self.fill16($0.baseAddress!, variant) }
            for j in 0..<16 { data[count - 16 + j] = tail[j] }
        }
        return data
    }

    private mutating func normalDouble() -> Double {
        if let cached = cachedNormal {
            cachedNormal = nil
            return cached
        }
        let u1 = uniformDouble()
        let u2 = uniformDouble()
        let r = (-2.0 * log1p(-u2)).squareRoot()
        let theta = 2.0 * Double.pi * u1
        cachedNormal = r * sin(theta)
        return r * cos(theta)
    }

    /// Box–Muller on 16 uniforms in place: pairs (j, j+8).
    @inline(__always) private static func fill16(_ d: UnsafeMutablePointer<Float>, _ variant: BoxMuller) {
        switch variant {
        case .avx2:
            for j in 0..<8 {
                let u1: Float = 1 - d[j]
                let u2 = d[j + 8]
                let radius = (Float(-2) * AVXMath.log(u1)).squareRoot()
                let theta = AVXMath.twoPi * u2
                let (s, c) = AVXMath.sincos(theta)
                d[j] = radius * c
                d[j + 8] = radius * s
            }
        case .scalar:
            for j in 0..<8 {
                let u1: Float = 1 - d[j]
                let u2 = d[j + 8]
                let radius = (Float(-2) * logf(u1)).squareRoot()
                let theta = Float(2.0 * Double.pi * Double(u2))  // 2.0f * pi<double> * u2: double product
                d[j] = radius * cosf(theta)
                d[j + 8] = radius * sinf(theta)
            }
        }
    }
}

/// Scalar transcriptions of avx_mathfun.h's `log256_ps` and `sincos256_ps` (Cephes polynomials),
/// operation for operation in float, so results are bit-identical to torch's AVX2 kernel.
/// torch's wheel is built with GCC, which contracts some multiply–adds into FMAs; the fused
/// steps below (`addingProduct`) are the ones that make 400k samples over 4 seeds bit-identical
/// to torch 2.15 (the Cody–Waite reduction and the final log sums stay unfused).
enum AVXMath {
    // C initialises these float constants from double literals: round double → float.
    static let twoPi = Float(2.0 * Double.pi)
    static let sqrtHalf = Float(0.707106781186547524 as Double)
    static let logP: [Float] = [
        7.0376836292E-2, -1.1514610310E-1, 1.1676998740E-1, -1.2420140846E-1, 1.4249322787E-1,
        -1.6668057665E-1, 2.0000714765E-1, -2.4999993993E-1, 3.3333331174E-1,
    ].map { Float($0 as Double) }
    static let logQ1 = Float(-2.12194440e-4 as Double)
    static let logQ2 = Float(0.693359375 as Double)
    static let minusDP1 = Float(-0.78515625 as Double)
    static let minusDP2 = Float(-2.4187564849853515625e-4 as Double)
    static let minusDP3 = Float(-3.77489497744594108e-8 as Double)
    static let sinP: [Float] = [-1.9515295891E-4, 8.3321608736E-3, -1.6666654611E-1].map { Float($0 as Double) }
    static let cosP: [Float] = [2.443315711809948E-005, -1.388731625493765E-003, 4.166664568298827E-002].map {
        Float($0 as Double)
    }
    static let fourOverPi = Float(1.27323954473516 as Double)

    /// `log256_ps` for one lane (NaN for x <= 0).
    @inline(__always) static func log(_ input: Float) -> Float {
        if !(input > 0) { return .nan }
        let clamped = max(input, Float(bitPattern: 0x0080_0000))
        let exponent = Int32(bitPattern: clamped.bitPattern >> 23) - 0x7f
        var x = Float(bitPattern: (clamped.bitPattern & ~0x7f80_0000) | Float(0.5).bitPattern)
        var e = Float(exponent) + 1
        let below = x < sqrtHalf
        let tmp: Float = below ? x : 0
        x = x - 1
        e = e - (below ? 1 : 0)
        x = x + tmp
        let z = x * x
        var y = logP[0]
        for k in 1..<9 { y = logP[k].addingProduct(y, x) }
        y = y * x
        y = (e * logQ1).addingProduct(y, z)
        y = y - z * 0.5
        x = x + y
        x = x + e * logQ2
        return x
    }

    /// `sincos256_ps` for one lane: (sin, cos).
    @inline(__always) static func sincos(_ input: Float) -> (Float, Float) {
        var signSin = input.bitPattern & 0x8000_0000
        var x = Float(bitPattern: input.bitPattern & 0x7fff_ffff)
        var y = x * fourOverPi
        var j = Int32(y)  // cvttps: truncation
        j = (j &+ 1) & ~1
        y = Float(j)
        let swapSin = UInt32(bitPattern: (j & 4) << 29)
        let polyMask = (j & 2) == 0
        x = x + y * minusDP1
        x = x + y * minusDP2
        x = x + y * minusDP3
        let signCos = UInt32(bitPattern: (~(j &- 2) & 4) << 29)
        signSin ^= swapSin
        let z = x * x
        var c = cosP[0]
        c = cosP[1].addingProduct(c, z)
        c = cosP[2].addingProduct(c, z)
        c = c * z
        c = (-(z * 0.5)).addingProduct(c, z)
        c = c + 1
        var s = sinP[0]
        s = sinP[1].addingProduct(s, z)
        s = sinP[2].addingProduct(s, z)
        s = s * z
        s = x.addingProduct(s, x)
        let ysin2: Float = polyMask ? s : 0
        let ysin1: Float = polyMask ? 0 : c
        s = s - ysin2
        c = c - ysin1
        let sinValue = ysin1 + ysin2
        let cosValue = c + s
        return (
            Float(bitPattern: sinValue.bitPattern ^ signSin),
            Float(bitPattern: cosValue.bitPattern ^ signCos)
        )
    }
}
