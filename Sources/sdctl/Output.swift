// Output: unbuffered writes to stdout/stderr, the one-line progress bar, and small formatters.

import SDDAPI

#if canImport(FoundationEssentials)
import FoundationEssentials
#else
import Foundation
#endif

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#elseif canImport(Darwin)
import Darwin
#endif

enum Output {
    /// Writes `text` to stdout as is.
    static func out(_ text: String) { write(text, to: STDOUT_FILENO) }

    /// Writes `line` and a newline to stderr.
    static func error(_ line: String) { write(line + "\n", to: STDERR_FILENO) }

    static func write(_ text: String, to fd: Int32) {
        var text = text
        text.withUTF8 { write(UnsafeRawBufferPointer($0), to: fd) }
    }

    static func write(_ bytes: UnsafeRawBufferPointer, to fd: Int32) {
        guard var p = bytes.baseAddress else { return }
        var left = bytes.count
        while left > 0 {
            let n = Glibc.write(fd, p, left)
            if n < 0 {
                if errno == EINTR { continue }
                return
            }
            p += n
            left -= n
        }
    }

    /// Whether stderr is a terminal (then progress is drawn there).
    static var stderrIsTerminal: Bool { isatty(STDERR_FILENO) == 1 }

    /// Writes `bytes` to `path` atomically (a temporary file in the same folder, then rename), or to stdout
    /// for "-".
    static func writeFile(_ bytes: [UInt8], to path: String) throws {
        if path == "-" {
            bytes.withUnsafeBytes { write($0, to: STDOUT_FILENO) }
            return
        }
        do {
            try Data(bytes).write(to: URL(fileURLWithPath: path), options: .atomic)
        } catch {
            throw CLIError("cannot write \(path): \(error)")
        }
    }
}

enum Format {
    /// "0:07", "12:30", "1:02:03".
    /// "30 s", "0.6 s": a timeout as the user gave it, to a tenth of a second.
    static func seconds(_ seconds: Double) -> String {
        guard seconds.isFinite, seconds >= 0 else { return "?" }
        let tenths = Int((seconds * 10).rounded())
        return tenths % 10 == 0 ? "\(tenths / 10) s" : "\(tenths / 10).\(tenths % 10) s"
    }

    static func duration(_ seconds: Double) -> String {
        guard seconds.isFinite, seconds >= 0 else { return "?" }
        let s = Int(seconds.rounded())
        let (h, m, sec) = (s / 3600, s / 60 % 60, s % 60)
        return h > 0 ? "\(h):\(pad(m)):\(pad(sec))" : "\(m):\(pad(sec))"
    }

    /// Local time "2024-05-29 10:00:00" for seconds since the epoch.
    static func time(_ epochSeconds: Double) -> String {
        var t = time_t(epochSeconds)
        var parts = tm()
        localtime_r(&t, &parts)
        return "\(parts.tm_year + 1900)-\(pad(Int(parts.tm_mon) + 1))-\(pad(Int(parts.tm_mday))) "
            + "\(pad(Int(parts.tm_hour))):\(pad(Int(parts.tm_min))):\(pad(Int(parts.tm_sec)))"
    }

    static func pad(_ n: Int) -> String { n < 10 ? "0\(n)" : "\(n)" }

    /// `text` cut to `width` characters with an ellipsis, newlines flattened.
    static func clip(_ text: String, _ width: Int) -> String {
        let flat = String(text.map { $0.isNewline ? " " : $0 })
        return flat.count <= width ? flat : String(flat.prefix(width - 1)) + "…"
    }

    /// `text` padded with spaces to `width` characters.
    static func column(_ text: String, _ width: Int) -> String {
        text.count >= width ? text : text + String(repeating: " ", count: width - text.count)
    }

    /// Where image `index` (0-based) of `count` goes: FILE itself for one image, else FILE-1.png … FILE-N.png.
    static func imagePath(_ base: String, index: Int, count: Int) -> String {
        guard count > 1, base != "-" else { return base }
        let lower = base.lowercased()
        if lower.hasSuffix(".png") {
            return String(base.dropLast(4)) + "-\(index + 1)" + String(base.suffix(4))
        }
        return base + "-\(index + 1)"
    }
}

/// The one-line progress display on a terminal: "3f2a  step 12/50 [######------]  24%  ETA 0:31".
struct ProgressBar {
    let job: String
    let width = 30
    private var drawn = false

    init(job: String) { self.job = job }

    mutating func show(_ event: JobEvent) {
        let id = JobID.short(job)
        let line: String
        switch event.event {
        case .heartbeat:
            return  // keeps the stream alive; nothing to draw
        case .queued:
            line = "\(id)  queued" + (event.position.map { ", position \($0)" } ?? "")
        case .preview:
            return
        case .started, .step:
            let step = event.step ?? 0, total = max(event.total ?? 0, 1)
            let filled = min(width, step * width / total)
            let bar = String(repeating: "#", count: filled) + String(repeating: "-", count: width - filled)
            let eta = event.etaSeconds.map { "  ETA \(Format.duration($0))" } ?? ""
            line = "\(id)  step \(step)/\(total) [\(bar)] \(Format.column("\(step * 100 / total)%", 4))\(eta)"
        case .finished:
            line = "\(id)  finished" + (event.images.map { ", \($0) image\($0 == 1 ? "" : "s")" } ?? "")
        case .failed:
            line = "\(id)  failed"
        case .canceled:
            line = "\(id)  canceled"
        }
        Output.write("\r\u{1B}[K" + line, to: STDERR_FILENO)
        drawn = true
    }

    /// Ends the line so later messages start on a fresh one.
    mutating func finish() {
        if drawn { Output.write("\n", to: STDERR_FILENO) }
        drawn = false
    }
}
