// ImageMatch: how the end-to-end tests compare an image made in another process with the one they expect.
// Exact equality holds only for the same code on the same bits in one process; a daemon or CLI child may run
// other BLAS kernels (OpenBLAS picks them per CPU and environment), which sum in another order: latents then
// differ by a few parts in a million and a pixel now and then by one level. The bound is the one the parity
// tests hold sdd to against diffusers (45 dB); a wrong seed, prompt or scheduler gives 10–25 dB.

import XCTest

/// PSNR in dB of two RGB byte arrays of the same size (infinity when equal).
func imagePSNR(_ a: [UInt8], _ b: [UInt8]) -> Double {
    guard a.count == b.count, !a.isEmpty else { return -.infinity }
    var squared = 0.0
    for i in 0..<a.count {
        let d = Double(a[i]) - Double(b[i])
        squared += d * d
    }
    if squared == 0 { return .infinity }
    return 10 * log10(255.0 * 255.0 / (squared / Double(a.count)))
}

/// Asserts that `got` (from another process) shows the same picture as `want`: same size, PSNR ≥ 45 dB.
func assertSameImage(_ got: [UInt8], _ want: [UInt8], _ message: @autoclosure () -> String = "",
                     file: StaticString = #filePath, line: UInt = #line) {
    XCTAssertEqual(got.count, want.count, "image sizes differ. \(message())", file: file, line: line)
    let db = imagePSNR(got, want)
    XCTAssertGreaterThanOrEqual(db, 45, "PSNR \(db) dB. \(message())", file: file, line: line)
}

/// Asserts that latents from another process are the expected ones: max |Δ| ≤ 1e-3 of max |want|, the bound the
/// parity tests hold sdd to against diffusers (a different summation order moves them by a few 1e-6; another
/// seed or step count by their whole scale).
func assertSameLatents(_ got: [Float], _ want: [Float], _ message: @autoclosure () -> String = "",
                       file: StaticString = #filePath, line: UInt = #line) {
    XCTAssertEqual(got.count, want.count, "latent counts differ. \(message())", file: file, line: line)
    guard got.count == want.count else { return }
    var diff: Float = 0, scale: Float = 0
    for i in 0..<got.count {
        diff = max(diff, abs(got[i] - want[i]))
        scale = max(scale, abs(want[i]))
    }
    XCTAssertLessThanOrEqual(diff, 1e-3 * max(scale, 1e-30), "max |Δ| \(diff) of scale \(scale). \(message())",
                             file: file, line: line)
}
