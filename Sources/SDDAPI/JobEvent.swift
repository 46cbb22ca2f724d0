// JobEvent: one line of GET /v1/jobs/{id}/events, an NDJSON stream (application/x-ndjson).

/// One progress event. The stream starts with the job's current state (queued, or started plus the last
/// step), then follows it live, and ends (the server closes the response) after a final event:
/// `finished`, `failed` or `canceled`. Each line is one JSON object, e.g.
/// `{"event":"step","job":"3f2a9c01b7d4e655","step":12,"total":50,"eta_seconds":30.5,"time":1717000000.5}`.
public struct JobEvent: Codable, Sendable, Equatable {
    public enum Kind: String, Codable, Sendable {
        /// Waiting; `position` says where (1 = next).
        case queued
        /// The worker took the job (also after a restart, when it resumes from `step`).
        case started
        /// A denoising step finished: `step` of `total`, `eta_seconds` left.
        case step
        /// A preview of the latents after `step` (the linear latent→RGB approximation, one pixel per latent cell):
        /// `preview_png` holds the PNG, base64; `GET /v1/jobs/{id}/preview` serves the latest one.
        case preview
        /// Done; `images` PNGs can be fetched.
        case finished
        /// Failed; `error` says why.
        case failed
        /// Canceled by its owner (or root) before it finished.
        case canceled
        /// Nothing happened, but the daemon is alive: sent every `heartbeatHeader` seconds while the stream is
        /// open, so a client that hears nothing for several intervals knows the daemon is gone or stopped.
        case heartbeat
    }

    /// Response header of an event stream: seconds between heartbeats.
    public static let heartbeatHeader = "SDD-Heartbeat-Interval"
    /// The daemon's heartbeat interval when not configured otherwise, seconds.
    public static let defaultHeartbeatSeconds = 10.0

    public var event: Kind
    /// The job's id.
    public var job: String
    /// When the event happened, seconds since the Unix epoch.
    public var time: Double
    /// queued: place in the queue (1 = next).
    public var position: Int?
    /// started/step: denoising steps done.
    public var step: Int?
    /// started/step: denoising steps in all.
    public var total: Int?
    /// step: estimated seconds left.
    public var etaSeconds: Double?
    /// finished: number of images.
    public var images: Int?
    /// failed: the reason.
    public var error: APIError?
    /// preview: the PNG, base64-encoded.
    public var previewPNG: String?

    public init(event: Kind, job: String, time: Double, position: Int? = nil, step: Int? = nil, total: Int? = nil,
                etaSeconds: Double? = nil, images: Int? = nil, error: APIError? = nil, previewPNG: String? = nil) {
        self.event = event
        self.job = job
        self.time = time
        self.position = position
        self.step = step
        self.total = total
        self.etaSeconds = etaSeconds
        self.images = images
        self.error = error
        self.previewPNG = previewPNG
    }

    /// Whether no event follows this one.
    public var isFinal: Bool { event == .finished || event == .failed || event == .canceled }

    enum CodingKeys: String, CodingKey {
        case event, job, time, position, step, total
        case etaSeconds = "eta_seconds"
        case images, error
        case previewPNG = "preview_png"
    }
}
