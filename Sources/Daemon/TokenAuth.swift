// TokenFile: the TCP listener's credentials — `NAME TOKEN` lines in a file only its owner may read — and the
// check of a request's `Authorization` header (Bearer TOKEN, or HTTP Basic with the token as password).

import Foundation
import SDDAPI

public struct TokenFile: Sendable {
    /// Shortest token accepted, characters: a token is a password a client sends on every request.
    public static let minimumTokenLength = 16

    /// Each entry: the token's bytes and the NAME that owns the jobs it submits.
    let entries: [(token: [UInt8], name: String)]

    /// The names, in file order (repeated once per token).
    public var names: [String] { entries.map(\.name) }

    /// Tokens from `NAME TOKEN` lines (blank lines and `#` comments skipped). NAME: letters, digits, `._-`, at
    /// most 64 characters. Throws `OptionError` naming the file and line for a bad line or a repeated token.
    public init(text: String, path: String = "tokens") throws {
        var entries: [(token: [UInt8], name: String)] = []
        var seen: Set<String> = []
        for (n, raw) in text.split(separator: "\n", omittingEmptySubsequences: false).enumerated() {
            let line = raw.trimmingCharacters(in: .whitespacesAndNewlines)
            if line.isEmpty || line.hasPrefix("#") { continue }
            let fields = line.split(whereSeparator: { $0 == " " || $0 == "\t" }).map(String.init)
            guard fields.count == 2 else {
                throw OptionError("\(path):\(n + 1): expected \"NAME TOKEN\", got \(fields.count) field(s)")
            }
            let (name, token) = (fields[0], fields[1])
            guard name.count <= 64, name.unicodeScalars.allSatisfy({
                CharacterSet.alphanumerics.contains($0) && $0.isASCII || "._-".unicodeScalars.contains($0)
            }) else {
                throw OptionError("\(path):\(n + 1): name \"\(name)\": use letters, digits, '.', '_' or '-' (at most 64)")
            }
            guard token.count >= Self.minimumTokenLength else {
                throw OptionError("\(path):\(n + 1): the token of \(name) is shorter than \(Self.minimumTokenLength) characters")
            }
            guard seen.insert(token).inserted else {
                throw OptionError("\(path):\(n + 1): this token is already given to another line; tokens must be unique")
            }
            entries.append((Array(token.utf8), name))
        }
        guard !entries.isEmpty else { throw OptionError("\(path): no \"NAME TOKEN\" lines") }
        self.entries = entries
    }

    /// Reads the file, refusing it unless it is a regular file that neither group nor others can read or write
    /// (mode 0600 or 0400), since anyone who reads it can act for every name in it.
    public static func load(path: String) throws -> TokenFile {
        var st = stat()
        guard stat(path, &st) == 0 else {
            throw OptionError("--tokens \(path): \(String(cString: strerror(errno)))")
        }
        guard (st.st_mode & S_IFMT) == S_IFREG else { throw OptionError("--tokens \(path): not a regular file") }
        guard st.st_mode & 0o077 == 0 else {
            throw OptionError("--tokens \(path): mode \(String(st.st_mode & 0o777, radix: 8)) lets other users read it; "
                + "chmod 600 \(path)")
        }
        guard let data = FileManager.default.contents(atPath: path) else {
            throw OptionError("--tokens \(path): cannot read it")
        }
        guard let text = String(data: data, encoding: .utf8) else { throw OptionError("--tokens \(path): not UTF-8 text") }
        return try TokenFile(text: text, path: path)
    }

    /// The NAME whose token the header carries — `Bearer TOKEN`, or `Basic base64(USER:TOKEN)` with any USER — or
    /// nil. Every token is compared in full (no early exit on a mismatching byte).
    public func name(authorization: String?) -> String? {
        guard let header = authorization?.trimmingCharacters(in: .whitespaces) else { return nil }
        let parts = header.split(separator: " ", maxSplits: 1).map(String.init)
        guard parts.count == 2 else { return nil }
        let credential = parts[1].trimmingCharacters(in: .whitespaces)
        let token: [UInt8]
        switch parts[0].lowercased() {
        case "bearer":
            token = Array(credential.utf8)
        case "basic":
            guard let decoded = Data(base64Encoded: credential), let colon = decoded.firstIndex(of: 0x3A) else { return nil }
            token = Array(decoded[decoded.index(after: colon)...])
        default:
            return nil
        }
        var found: String?
        for entry in entries where Self.equal(entry.token, token) && found == nil { found = entry.name }
        return found
    }

    /// Compares every byte of equal-length inputs, so the time taken does not say where they differ.
    static func equal(_ a: [UInt8], _ b: [UInt8]) -> Bool {
        guard a.count == b.count else { return false }
        var diff: UInt8 = 0
        for i in a.indices { diff |= a[i] ^ b[i] }
        return diff == 0
    }

    /// 401 with a body every client here reads: the native and OpenAI `error` object (`code`, `message`, `type`,
    /// `param`) and A1111's `detail`.
    public static func unauthorized() -> APIResponse {
        let message = "missing or wrong token: send \"Authorization: Bearer TOKEN\" (or HTTP Basic with the token as password)"
        let body: [String: Any] = [
            "error": ["code": "unauthorized", "message": message, "type": "invalid_request_error", "param": NSNull()],
            "detail": message,
        ]
        let data = (try? JSONSerialization.data(withJSONObject: body, options: [.sortedKeys])) ?? Data("{}".utf8)
        return APIResponse(status: 401, body: Array(data) + [0x0A],
                           headers: [("WWW-Authenticate", "Bearer realm=\"sdd\", Basic realm=\"sdd\"")])
    }
}
