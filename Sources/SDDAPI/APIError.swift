// APIError: every error a client can see, as `{"error": {"code": "...", "message": "..."}}` with an HTTP status.

/// A stable, machine-readable error code plus a human-readable message naming the field or path at fault.
/// Encoded on its own as `{"code": …, "message": …}`; responses wrap it: see `APIErrorResponse`.
public struct APIError: Error, Codable, Sendable, Equatable, CustomStringConvertible {
    public var code: Code
    public var message: String

    public init(_ code: Code, _ message: String) {
        self.code = code
        self.message = message
    }

    public var description: String { "\(code.rawValue): \(message)" }

    /// The HTTP status that goes with the code.
    public var httpStatus: Int { code.httpStatus }

    /// Error codes. Unknown codes from a newer daemon decode fine (it is a string).
    public struct Code: RawRepresentable, Codable, Sendable, Hashable, CustomStringConvertible {
        public var rawValue: String
        public init(rawValue: String) { self.rawValue = rawValue }
        public init(from decoder: Decoder) throws { rawValue = try decoder.singleValueContainer().decode(String.self) }
        public func encode(to encoder: Encoder) throws {
            var c = encoder.singleValueContainer()
            try c.encode(rawValue)
        }
        public var description: String { rawValue }

        /// 400: the request is not HTTP/1.1 the daemon can read (garbage, a header or request line too long);
        /// the connection is closed after the answer.
        public static let badRequest = Code(rawValue: "bad_request")
        /// 400: the body is not JSON (or not an object).
        public static let badJSON = Code(rawValue: "bad_json")
        /// 400: a field the API does not know.
        public static let unknownField = Code(rawValue: "unknown_field")
        /// 400: a field has the wrong JSON type (or a required one is missing).
        public static let wrongType = Code(rawValue: "wrong_type")
        /// 400: a value is out of range or not allowed (size not a multiple of 8, unknown scheduler, …).
        public static let invalidValue = Code(rawValue: "invalid_value")
        /// 404: no such route, job (or not yours), or image.
        public static let notFound = Code(rawValue: "not_found")
        /// 405: the route exists but not with this method.
        public static let methodNotAllowed = Code(rawValue: "method_not_allowed")
        /// 409: the request conflicts with the job's state (e.g. cancel a finished job, image not ready).
        public static let conflict = Code(rawValue: "conflict")
        /// 413: the body is larger than `APIVersion.maxRequestBodyBytes`.
        public static let bodyTooLarge = Code(rawValue: "body_too_large")
        /// 413: the request cannot run within the daemon's memory budget (the message has the planner's numbers).
        public static let exceedsMemoryBudget = Code(rawValue: "exceeds_memory_budget")
        /// 503: the daemon's model cannot be used (missing or broken files); the message says why.
        public static let modelUnavailable = Code(rawValue: "model_unavailable")
        /// 507: the state directory has too little free space to take the job and its results.
        public static let insufficientStorage = Code(rawValue: "insufficient_storage")
        /// In a job's `error`: runs of the job ended with the daemon process (killed, e.g. out of memory) too many
        /// times; it is not retried, so the jobs behind it run.
        public static let crashedRepeatedly = Code(rawValue: "crashed_repeatedly")
        /// 429: the queue is full; retry later.
        public static let queueFull = Code(rawValue: "queue_full")
        /// 429: as many image downloads as the daemon serves at once are in progress; retry shortly.
        public static let tooManyDownloads = Code(rawValue: "too_many_downloads")
        /// 503: the daemon is shutting down.
        public static let shuttingDown = Code(rawValue: "shutting_down")
        /// 500: the daemon could not do it (disk full, …); the message says what.
        public static let internalError = Code(rawValue: "internal")
        /// In a job's `error`: the generation itself failed (model error, bad checkpoint, …).
        public static let generationFailed = Code(rawValue: "generation_failed")
        /// In a job's `error`: the job was canceled.
        public static let canceled = Code(rawValue: "canceled")

        public var httpStatus: Int {
            switch self {
            case .badRequest, .badJSON, .unknownField, .wrongType, .invalidValue: return 400
            case .notFound: return 404
            case .methodNotAllowed: return 405
            case .conflict: return 409
            case .bodyTooLarge, .exceedsMemoryBudget: return 413
            case .queueFull, .tooManyDownloads: return 429
            case .shuttingDown, .modelUnavailable: return 503
            case .insufficientStorage: return 507
            default: return 500
            }
        }
    }
}

/// The body of every error response: `{"error": {"code": "invalid_value", "message": "steps 0 is out of range (1…1000)"}}`.
public struct APIErrorResponse: Codable, Sendable, Equatable {
    public var error: APIError
    public init(error: APIError) { self.error = error }
}
