// SDDAPI: the request, response and event types the daemon and sdctl exchange (JSON over HTTP/1.1
// on a Unix socket). No dependencies beyond Foundation, so the client links nothing heavy.

/// The API's path prefix, version and well-known locations.
public enum APIVersion {
    /// Every API route except /metrics starts with this.
    public static let prefix = "/v1"
    /// The socket the daemon listens on when not told otherwise (and sdctl's default without $SDD_SOCKET).
    public static let defaultSocketPath = "/run/sdd/sdd.sock"
    /// The environment variable sdctl reads for the socket path.
    public static let socketEnvironmentVariable = "SDD_SOCKET"
    /// Largest request body the daemon reads, in bytes; bigger bodies get 413 `body_too_large`.
    public static let maxRequestBodyBytes = 64 * 1024
}

/// Job ids: 16 lowercase hexadecimal characters (64 random bits), e.g. "3f2a9c01b7d4e655".
public enum JobID {
    public static let length = 16

    /// Whether `s` has the id format; anything else in a path is 404 without touching the disk.
    public static func isValid(_ s: some StringProtocol) -> Bool {
        s.utf8.count == length && s.utf8.allSatisfy { (0x30...0x39).contains($0) || (0x61...0x66).contains($0) }
    }

    /// A short form for status lines and logs: the first 4 characters ("3f2a").
    public static func short(_ id: String) -> String { String(id.prefix(4)) }
}
