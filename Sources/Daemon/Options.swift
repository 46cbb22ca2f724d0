// Options: parsing of the daemon's command-line values — durations ("5m", "forever"), socket modes ("0660") and
// groups — with errors that quote what the user typed. Byte sizes are Pipeline's `MemorySize`, as for every command.

import Foundation

/// A command-line value the daemon could not understand.
public struct OptionError: Error, CustomStringConvertible, Equatable {
    public let message: String
    public init(_ message: String) { self.message = message }
    public var description: String { message }
}

/// Durations as ollama's keep_alive takes them: "30s", "5m", "1h", "2d", "250ms", "1h30m", a bare number of
/// seconds, "0" (immediately), and "-1" / "forever" / "inf" (never).
public enum DurationOption {
    /// Seconds, or nil for "forever".
    public static func parse(_ text: String, option: String = "duration") throws -> Double? {
        let s = text.trimmingCharacters(in: .whitespaces).lowercased()
        if ["-1", "forever", "inf", "infinite", "never"].contains(s) { return nil }
        if let n = Double(s) {
            guard n >= 0, n.isFinite else { throw OptionError("\(option) \"\(text)\": must be ≥ 0, or -1/forever") }
            return n
        }
        var total = 0.0
        var rest = Substring(s)
        guard !rest.isEmpty else { throw OptionError("\(option) \"\(text)\": empty") }
        while !rest.isEmpty {
            let digits = rest.prefix { $0.isNumber || $0 == "." }
            let unit = rest.dropFirst(digits.count).prefix { $0.isLetter }
            guard let value = Double(digits), !unit.isEmpty else {
                throw OptionError("\(option) \"\(text)\": expected e.g. 30s, 5m, 1h, 0 or forever")
            }
            let scale: Double
            switch unit {
            case "ms": scale = 0.001
            case "s", "sec", "secs": scale = 1
            case "m", "min", "mins": scale = 60
            case "h", "hr", "hrs": scale = 3600
            case "d", "day", "days": scale = 86400
            default: throw OptionError("\(option) \"\(text)\": unknown unit \"\(unit)\" (use ms, s, m, h or d)")
            }
            total += value * scale
            rest = rest.dropFirst(digits.count + unit.count)
        }
        return total
    }
}

/// Socket file permissions in octal ("0660", "660", "0o660").
public enum FileModeOption {
    public static func parse(_ text: String, option: String = "--socket-mode") throws -> mode_t {
        var s = Substring(text.trimmingCharacters(in: .whitespaces))
        if s.hasPrefix("0o") { s = s.dropFirst(2) }
        guard !s.isEmpty, s.count <= 4, let mode = UInt32(s, radix: 8), mode <= 0o777 else {
            throw OptionError("\(option) \"\(text)\": expected octal permissions such as 0660")
        }
        return mode_t(mode)
    }
}

/// A group given by name or numeric id.
public enum GroupOption {
    public static func resolve(_ text: String, option: String = "--socket-group") throws -> gid_t {
        if let gid = UInt32(text) { return gid_t(gid) }
        guard let entry = getgrnam(text) else { throw OptionError("\(option) \"\(text)\": no such group") }
        return entry.pointee.gr_gid
    }
}
