// PNGReader: reads the PNGs sdd writes back for tests — pixels through libpng's simplified API, text chunks
// (tEXt, iTXt) by walking the chunk list with their CRCs checked. Test support only; nothing shipped reads PNGs.

import CPNG
import Foundation
import Pipeline

/// A decoded PNG.
public struct PNGImage: Sendable {
    public let width: Int
    public let height: Int
    /// Row-major RGB, 3 bytes per pixel.
    public let rgb: [UInt8]
    /// Uncompressed tEXt and iTXt entries in file order (compressed zTXt/iTXt are skipped).
    public let text: [(key: String, value: String)]
}

/// Reads PNGs back: pixels through libpng's simplified API (which keeps its setjmp inside C, so a
/// corrupt file is an error, not a crash) and text chunks by walking the chunk list here.
public enum PNGReader {
    /// Largest image accepted, in pixels, to bound the allocation a hostile header can ask for.
    public static let maxPixels = 1 << 28

    public static func read(from url: URL) throws -> PNGImage {
        let data: [UInt8]
        do { data = [UInt8](try Data(contentsOf: url)) } catch {
            throw OutputFileError(path: url.path, "cannot read: \(error.localizedDescription)")
        }
        do { return try decode(data) } catch let e as OutputFileError {
            throw OutputFileError(path: url.path, e.message)
        }
    }

    public static func decode(_ data: [UInt8]) throws -> PNGImage {
        let text = try textChunks(data)
        var image = png_image()
        image.version = png_uint_32(PNG_IMAGE_VERSION)
        defer { png_image_free(&image) }
        let ok = data.withUnsafeBytes { png_image_begin_read_from_memory(&image, $0.baseAddress, $0.count) }
        guard ok != 0 else { throw OutputFileError(path: "", "not a readable PNG: \(message(of: &image))") }
        let width = Int(image.width)
        let height = Int(image.height)
        guard width > 0, height > 0, width * height <= maxPixels else {
            throw OutputFileError(path: "", "PNG is \(width)×\(height), larger than \(maxPixels) pixels")
        }
        image.format = png_uint_32(PNG_FORMAT_RGB)
        var rgb = [UInt8](repeating: 0, count: width * height * 3)
        let done = rgb.withUnsafeMutableBytes { png_image_finish_read(&image, nil, $0.baseAddress, 0, nil) }
        guard done != 0 else { throw OutputFileError(path: "", "PNG decoding failed: \(message(of: &image))") }
        return PNGImage(width: width, height: height, rgb: rgb, text: text)
    }

    private static func message(of image: inout png_image) -> String {
        withUnsafeBytes(of: &image.message) { raw in
            String(decoding: raw.prefix { $0 != 0 }, as: UTF8.self)
        }
    }

    /// The uncompressed tEXt (Latin-1) and iTXt (UTF-8) entries, in order; checks chunk bounds and CRCs.
    static func textChunks(_ d: [UInt8]) throws -> [(key: String, value: String)] {
        let signature: [UInt8] = [137, 80, 78, 71, 13, 10, 26, 10]
        guard d.count >= 8, Array(d[0..<8]) == signature else { throw OutputFileError(path: "", "not a PNG file") }
        var out: [(key: String, value: String)] = []
        var pos = 8
        func u32(_ at: Int) -> Int { Int(d[at]) << 24 | Int(d[at + 1]) << 16 | Int(d[at + 2]) << 8 | Int(d[at + 3]) }
        while pos + 12 <= d.count {
            let length = u32(pos)
            guard length <= d.count - pos - 12 else {
                throw OutputFileError(path: "", "PNG chunk at byte \(pos) is truncated")
            }
            let type = String(
                d[(pos + 4)..<(pos + 8)].map {
                    ($0 >= 65 && $0 <= 90) || ($0 >= 97 && $0 <= 122)
                        ? Character(Unicode.Scalar($0)) : "?"
                })
            let body = Array(d[(pos + 8)..<(pos + 8 + length)])
            guard CRC32.checksum(d[(pos + 4)..<(pos + 8 + length)]) == UInt32(u32(pos + 8 + length)) else {
                throw OutputFileError(path: "", "PNG chunk \(type) at byte \(pos) has a bad CRC")
            }
            pos += 12 + length
            if type == "IEND" { break }
            guard let nul = body.firstIndex(of: 0) else { continue }
            let key = String(body[..<nul].map { Character(Unicode.Scalar($0)) })
            if type == "tEXt" {
                out.append((key, String(body[(nul + 1)...].map { Character(Unicode.Scalar($0)) })))
            } else if type == "iTXt" {
                // keyword NUL, compression flag, method, language NUL, translated keyword NUL, text
                var i = nul + 1
                guard i + 2 <= body.count else { continue }
                let compressed = body[i] != 0
                i += 2
                guard let langEnd = body[i...].firstIndex(of: 0),
                    let transEnd = body[(langEnd + 1)...].firstIndex(of: 0), !compressed
                else { continue }
                out.append((key, String(decoding: body[(transEnd + 1)...], as: UTF8.self)))
            }
        }
        return out
    }
}

/// CRC-32 as PNG (and zlib) define it.
enum CRC32 {
    static let table: [UInt32] = (0..<256).map { n in
        var c = UInt32(n)
        for _ in 0..<8 { c = c & 1 != 0 ? 0xEDB8_8320 ^ (c >> 1) : c >> 1 }
        return c
    }

    static func checksum<C: Collection>(_ bytes: C) -> UInt32 where C.Element == UInt8 {
        var c: UInt32 = 0xFFFF_FFFF
        for b in bytes { c = table[Int((c ^ UInt32(b)) & 0xFF)] ^ (c >> 8) }
        return c ^ 0xFFFF_FFFF
    }
}
