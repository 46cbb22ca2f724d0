// Gemm: the one place TiledKernels runs a row-major GEMM: OpenBLAS's sgemm for F32 products, or CKernels'
// BF16 GEMM (F32 sums: AMX-BF16 tiles where the CPU and OS allow, else AVX512_BF16) where a product asks for
// BF16 and the CPU has it.
// Every product in the module (linear, conv bands, attention tiles) goes through `sgemm`.
import CBLAS
import CKernels
#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// How a product multiplies its operands.
public enum ProductPrecision: String, Sendable, CaseIterable {
    /// F32 products and sums (OpenBLAS): diffusers' fp32 results to rounding.
    case f32
    /// Operands rounded to BF16, products summed in F32 (vdpbf16ps): twice the multiply-adds per cycle of
    /// F32 on CPUs with AVX512_BF16, several times that with AMX-BF16 tiles, at about 2⁻⁹ relative error per
    /// operand. Without the instructions, products asking for it run in F32.
    case bf16

    /// Whether this CPU runs BF16 products (AVX-512 with AVX512_BF16).
    public static let bf16Available: Bool = ck_gemm_bf16_available() != 0

    /// The kernel BF16 products run on here (nil: none, they run in F32).
    public static let bf16Kernel: BF16Kernel? = BF16Kernel(ck_gemm_bf16_kernel())

    /// How kernel profiles name products of this precision after the weight type: "" or " bf16".
    var profileSuffix: String { self == .bf16 && ProductPrecision.bf16Available ? " bf16" : "" }
}

/// The instructions CKernels' BF16 GEMM runs on. AMX is chosen where it runs; SDD_BF16_KERNEL=avx512 in the
/// environment forces AVX512_BF16 (for A/B timing; see `ck_gemm_bf16_kernel`).
public enum BF16Kernel: String, Sendable {
    /// vdpbf16ps on 14 × 32 tiles of zmm accumulators.
    case avx512bf16
    /// AMX-BF16's tdpbf16ps on 32 × 32 blocks of tile registers (Sapphire Rapids and later).
    case amx

    init?(_ kernel: Int32) {
        switch Int(kernel) {
        case Int(CK_BF16_AVX512): self = .avx512bf16
        case Int(CK_BF16_AMX): self = .amx
        default: return nil
        }
    }

    var ckValue: Int32 { Int32(self == .amx ? CK_BF16_AMX : CK_BF16_AVX512) }
}

/// Whether a product pays in BF16 rather than F32 with `kernel`.
/// AVX512_BF16 computes whole 14 × 32 register tiles; a product whose rows or columns would mostly be padding
/// (e.g. attention's 40-wide P·V) runs faster in F32. It does twice the work per cycle, so it pays while at
/// least ~70% of the padded tiles' area is real.
/// AMX-BF16 does ~3–5× OpenBLAS's F32 on one core even with 40 of 64 columns real (256 × 40 × 512: 158 against
/// 56 GFLOP/s; 77 × 40 × 77: 181 against 97), but each call loads a tile configuration and packs both
/// operands: below 16 rows or 2¹⁷ multiply-adds F32 is faster (4 × 320 × 320: 68 against 33; 33³: 55
/// against 28; 16 × 40 × 24: 42 against 25). Figures: best of 5, one core, Sapphire Rapids VM.
@inline(__always)
func bf16Pays(m: Int, n: Int, k: Int, kernel: BF16Kernel) -> Bool {
    switch kernel {
    case .amx:
        return m >= 16 && m * n * k >= 1 << 17
    case .avx512bf16:
        let paddedM = (m + 13) / 14 * 14, paddedN = (n + 31) / 32 * 32
        return 10 * m * n >= 7 * paddedM * paddedN
    }
}

/// C[m, n] = alpha · op(A)[m, k] · op(B)[k, n] + beta · C, all row-major.
/// `transA` / `transB` say that A is stored [k, m] / B is stored [n, k]; `lda`, `ldb`, `ldc` are row strides.
/// `precision` .bf16 multiplies in BF16 where the CPU can and the shape pays (see `bf16Pays`), else F32.
/// Zero-sized products are handled here (BLAS rejects leading dimensions of 0).
@inline(__always)
func sgemm(
    transA: Bool = false, transB: Bool = false,
    m: Int, n: Int, k: Int,
    alpha: Float = 1,
    a: UnsafePointer<Float>, lda: Int,
    b: UnsafePointer<Float>, ldb: Int,
    beta: Float,
    c: UnsafeMutablePointer<Float>, ldc: Int,
    precision: ProductPrecision = .f32
) {
    if m == 0 || n == 0 { return }
    if k == 0 {
        for i in 0..<m {
            let row = c + i * ldc
            for j in 0..<n { row[j] = beta == 0 ? 0 : beta * row[j] }
        }
        return
    }
    // The BF16 kernels pack into workspaces of their own (~0.56 MB each, one per product running at once):
    // taking them from the scratch arenas made them grow to every size in turn.
    if precision == .bf16, !transA, let kernel = ProductPrecision.bf16Kernel,
       bf16Pays(m: m, n: n, k: k, kernel: kernel),
       ck_gemm_bf16_using(kernel.ckValue, transB ? 1 : 0, Int64(m), Int64(n), Int64(k), alpha, a, Int64(lda), b,
                          Int64(ldb), beta, c, Int64(ldc)) == 0 {
        return
    }
    BLASThreading.ensure()
    let limit = Int(Int32.max)
    precondition(m <= limit && n <= limit && k <= limit && lda <= limit && ldb <= limit && ldc <= limit,
                 "sgemm: dimensions exceed 32-bit BLAS indices (m \(m), n \(n), k \(k))")
    cblas_sgemm(CblasRowMajor,
                transA ? CblasTrans : CblasNoTrans,
                transB ? CblasTrans : CblasNoTrans,
                blasint(m), blasint(n), blasint(k),
                alpha, a, blasint(lda), b, blasint(ldb),
                beta, c, blasint(ldc))
}

/// Process-wide BLAS threading: OpenBLAS runs every call on its calling thread only. TiledKernels splits
/// large products into independent units itself (`Parallel.forEachUnit`), so no OpenBLAS worker threads spin
/// (sched_yield) beside the kernels' own threads, and a core slowed by another process only delays the units
/// it happens to hold. Every GEMM entry point calls `ensure()` first.
enum BLASThreading {
    private static let configured: Void = { openblas_set_num_threads(1) }()

    @inline(__always)
    static func ensure() { _ = configured }
}

/// How a product is cut into units for `Parallel.forEachUnit`: chunks of `rowChunk` output rows ×
/// `colChunk` output columns. Every unit packs its row chunk of one operand and its column chunk of the other,
/// so the cut minimizes the total packed (rowUnits · cols + colUnits · rows) for about 4 units per core: a
/// product with few rows and a large weight is cut along the weight, a tall one along its rows.
/// Chunks are multiples of 16 unless whole.
struct GemmGrid {
    let rows: Int, cols: Int
    let rowChunk: Int, colChunk: Int
    var rowUnits: Int { (rows + rowChunk - 1) / rowChunk }
    var colUnits: Int { (cols + colChunk - 1) / colChunk }
    var units: Int { rowUnits * colUnits }

    /// `depth`: multiply-adds behind one output element (the K dimension).
    init(rows: Int, cols: Int, depth: Int, minRows: Int = 64, minCols: Int = 64) {
        self.rows = rows
        self.cols = cols
        // Below ~4 MFLOP, or on one core, a single unit: thread hand-off costs more than it saves.
        if Parallel.cores == 1 || 2 * rows * cols * depth < (1 << 22) {
            rowChunk = max(1, rows)
            colChunk = max(1, cols)
            return
        }
        let target = 4 * Parallel.cores
        let maxRowUnits = max(1, rows / minRows), maxColUnits = max(1, cols / minCols)
        var best = (ru: 1, cu: 1, cost: Int.max)
        for ru in 1...min(target, maxRowUnits) {
            let cu = min(maxColUnits, (target + ru - 1) / ru)
            // Fewer units than asked for (small products) count as extra cost: idle cores.
            let shortfall = max(0, min(target, maxRowUnits * maxColUnits) - ru * cu)
            let cost = ru * cols + cu * rows + shortfall * (rows + cols)
            if cost < best.cost { best = (ru, cu, cost) }
        }
        rowChunk = GemmGrid.chunk(rows, best.ru)
        colChunk = GemmGrid.chunk(cols, best.cu)
    }

    private static func chunk(_ total: Int, _ parts: Int) -> Int {
        if parts <= 1 { return max(1, total) }
        let c = (total + parts - 1) / parts
        return min(total, (c + 15) / 16 * 16)
    }

    /// The row and column ranges of unit `u`.
    func ranges(_ u: Int) -> (Range<Int>, Range<Int>) {
        let r0 = (u / colUnits) * rowChunk, c0 = (u % colUnits) * colChunk
        return (r0..<min(rows, r0 + rowChunk), c0..<min(cols, c0 + colChunk))
    }
}
