// PNGWriter: 8-bit RGB PNGs with text chunks (tEXt, or iTXt for non-Latin-1 text),
// written atomically through DurableFile (temp file in the same folder, fsync, rename). Encoding uses libpng.

import CPNG
import Foundation

#if canImport(Glibc)
    import Glibc
#endif

/// An error writing or reading an output file, naming the path.
public struct OutputFileError: Error, CustomStringConvertible, Sendable, Equatable {
    /// The file concerned ("" when encoding in memory).
    public let path: String
    public let message: String
    public init(path: String, _ message: String) {
        self.path = path
        self.message = message
    }
    public var description: String { path.isEmpty ? message : "\(path): \(message)" }
}

/// Writes RGB images as PNG.
///
/// libpng reports errors by calling an error callback and then `longjmp`-ing to a `setjmp` the
/// caller established. Swift cannot call `setjmp` (it may return twice) and must not be
/// `longjmp`-ed over (it skips releases and `defer`s), so this writer never lets libpng fail:
///  - every input libpng would reject (size limits, buffer length, keyword rules, NUL in text)
///    is validated in Swift first and reported as an `OutputFileError`;
///  - libpng writes into an in-memory buffer through a write callback that cannot fail, and the
///    file I/O (temp file, fsync, rename) is done in Swift with ordinary error handling.
/// What remains (out of memory, a bug here) reaches the error callback, which prints libpng's
/// message; libpng then finds no jump buffer and aborts. That is a programmer error or OOM, never
/// something a user's input can trigger.
public enum PNGWriter {
    /// Largest width/height libpng accepts by default (PNG_USER_WIDTH_MAX / PNG_USER_HEIGHT_MAX).
    public static let maxDimension = 1_000_000

    /// Encodes and writes `rgb` (row-major, 3 bytes per pixel, `width * height * 3` bytes) to `url`
    /// atomically, with one text chunk per entry: tEXt when the value is Latin-1, else iTXt (UTF-8).
    /// Keys must be PNG keywords: 1–79 Latin-1 printable characters, no leading, trailing or double
    /// spaces. Throws `OutputFileError` naming the path.
    public static func write(
        rgb: [UInt8], width: Int, height: Int, text: [(key: String, value: String)],
        to url: URL
    ) throws {
        let bytes: [UInt8]
        do { bytes = try encode(rgb: rgb, width: width, height: height, text: text) } catch let e as OutputFileError {
            throw OutputFileError(path: url.path, e.message)
        }
        try OutputFiles.writeAtomically(bytes, to: url)
    }

    /// The PNG file bytes for `rgb` (see `write`). Throws `OutputFileError` on invalid input.
    public static func encode(
        rgb: [UInt8], width: Int, height: Int,
        text: [(key: String, value: String)] = []
    ) throws -> [UInt8] {
        guard width >= 1, height >= 1, width <= maxDimension, height <= maxDimension else {
            throw OutputFileError(
                path: "", "image size \(width)×\(height) is outside 1…\(maxDimension) pixels per side")
        }
        let (rowBytes, o1) = width.multipliedReportingOverflow(by: 3)
        let (total, o2) = rowBytes.multipliedReportingOverflow(by: height)
        guard !o1, !o2, rgb.count == total else {
            throw OutputFileError(path: "", "expected \(width)×\(height)×3 = \(total) RGB bytes, got \(rgb.count)")
        }
        let chunks = try text.map { try TextChunk(key: $0.key, value: $0.value) }

        guard let png = png_create_write_struct(PNG_LIBPNG_VER_STRING, nil, pngErrorCallback, pngWarningCallback) else {
            throw OutputFileError(path: "", "libpng could not allocate a write struct")
        }
        var pngOpt: OpaquePointer? = png
        guard let info = png_create_info_struct(png) else {
            png_destroy_write_struct(&pngOpt, nil)
            throw OutputFileError(path: "", "libpng could not allocate an info struct")
        }
        var infoOpt: OpaquePointer? = info
        defer { png_destroy_write_struct(&pngOpt, &infoOpt) }

        let sink = PNGMemorySink()
        let sinkPtr = Unmanaged.passUnretained(sink).toOpaque()
        withExtendedLifetime(sink) {
            png_set_write_fn(png, sinkPtr, pngWriteCallback, pngFlushCallback)
            png_set_IHDR(
                png, info, png_uint_32(width), png_uint_32(height), 8, PNG_COLOR_TYPE_RGB,
                PNG_INTERLACE_NONE, PNG_COMPRESSION_TYPE_DEFAULT, PNG_FILTER_TYPE_DEFAULT)
            // png_set_text copies keys and values, so the C strings only need to live for the call.
            if !chunks.isEmpty {
                var cStrings: [UnsafeMutablePointer<CChar>] = []
                defer { for p in cStrings { p.deallocate() } }
                func dup(_ bytes: [UInt8]) -> UnsafeMutablePointer<CChar> {
                    let p = UnsafeMutablePointer<CChar>.allocate(capacity: bytes.count + 1)
                    bytes.withUnsafeBufferPointer { src in
                        for i in 0..<bytes.count { p[i] = CChar(bitPattern: src[i]) }
                    }
                    p[bytes.count] = 0
                    cStrings.append(p)
                    return p
                }
                let empty = dup([])
                var entries: [png_text] = chunks.map { c in
                    var t = png_text()
                    t.compression = c.isInternational ? PNG_ITXT_COMPRESSION_NONE : PNG_TEXT_COMPRESSION_NONE
                    t.key = dup(c.keyLatin1)
                    t.text = dup(c.valueBytes)
                    t.text_length = c.valueBytes.count
                    t.itxt_length = 0
                    t.lang = c.isInternational ? empty : nil
                    t.lang_key = c.isInternational ? empty : nil
                    return t
                }
                png_set_text(png, info, &entries, Int32(entries.count))
            }
            png_write_info(png, info)
            rgb.withUnsafeBufferPointer { buf in
                guard let base = buf.baseAddress else { return }  // not reached: rgb is non-empty
                for y in 0..<height {
                    png_write_row(png, base + y * rowBytes)
                }
            }
            png_write_end(png, nil)
        }
        return sink.bytes
    }

    /// One validated text entry: the keyword in Latin-1 and the value as Latin-1 (tEXt) or UTF-8 (iTXt).
    struct TextChunk {
        let keyLatin1: [UInt8]
        let valueBytes: [UInt8]
        let isInternational: Bool

        init(key: String, value: String) throws {
            var k: [UInt8] = []
            for u in key.unicodeScalars {
                let v = u.value
                guard (32...126).contains(v) || (161...255).contains(v) else {
                    let code = String(v, radix: 16, uppercase: true)
                    throw OutputFileError(
                        path: "",
                        "PNG text key \"\(key)\" has a character (U+\(code)) "
                            + "not allowed in a PNG keyword (printable Latin-1 only)")
                }
                k.append(UInt8(v))
            }
            guard (1...79).contains(k.count) else {
                throw OutputFileError(path: "", "PNG text key \"\(key)\" must be 1 to 79 characters")
            }
            guard k.first != 0x20, k.last != 0x20, !zip(k, k.dropFirst()).contains(where: { $0 == 0x20 && $1 == 0x20 })
            else {
                throw OutputFileError(path: "", "PNG text key \"\(key)\" has leading, trailing or double spaces")
            }
            guard !value.unicodeScalars.contains("\0") else {
                throw OutputFileError(path: "", "PNG text value for \"\(key)\" contains a NUL character")
            }
            keyLatin1 = k
            if value.unicodeScalars.allSatisfy({ $0.value <= 0xFF }) {
                isInternational = false
                valueBytes = value.unicodeScalars.map { UInt8($0.value) }
            } else {
                isInternational = true
                valueBytes = Array(value.utf8)
            }
        }
    }
}

/// Collects libpng's output in memory.
final class PNGMemorySink {
    var bytes: [UInt8] = []
}

private let pngWriteCallback: @convention(c) (OpaquePointer?, UnsafeMutablePointer<UInt8>?, Int) -> Void = {
    png, data, length in
    guard let png, let data, length > 0, let io = png_get_io_ptr(png) else { return }
    let sink = Unmanaged<PNGMemorySink>.fromOpaque(io).takeUnretainedValue()
    sink.bytes.append(contentsOf: UnsafeBufferPointer(start: data, count: length))
}

private let pngFlushCallback: @convention(c) (OpaquePointer?) -> Void = { _ in }

private let pngErrorCallback: @convention(c) (OpaquePointer?, UnsafePointer<CChar>?) -> Void = { _, message in
    // Reached only on OOM or a bug here (inputs are validated first). Returning makes libpng
    // abort, since no jump buffer is set — see PNGWriter's comment.
    let text = message.map { String(cString: $0) } ?? "unknown error"
    let line = Array("sdd: libpng fatal error: \(text)\n".utf8)
    _ = line.withUnsafeBytes { Glibc.write(2, $0.baseAddress, $0.count) }
}

private let pngWarningCallback: @convention(c) (OpaquePointer?, UnsafePointer<CChar>?) -> Void = { _, _ in }
