// Health and ModelInfo: GET /v1/health and GET /v1/models.

/// GET /v1/health: 200 while serving (status "ok"), 503 with status "shutting_down" while stopping.
public struct Health: Codable, Sendable, Equatable {
    /// "ok" or "shutting_down".
    public var status: String
    /// The daemon's version string.
    public var version: String
    /// Seconds since the daemon started.
    public var uptimeSeconds: Double
    /// Jobs waiting (not counting the running one).
    public var queueDepth: Int
    /// The running job's id, if any.
    public var running: String?
    /// Whether the model's weights are mapped now (they are released after the keep-alive idle time).
    public var modelLoaded: Bool

    public init(status: String, version: String, uptimeSeconds: Double, queueDepth: Int, running: String?,
                modelLoaded: Bool) {
        self.status = status
        self.version = version
        self.uptimeSeconds = uptimeSeconds
        self.queueDepth = queueDepth
        self.running = running
        self.modelLoaded = modelLoaded
    }

    enum CodingKeys: String, CodingKey {
        case status, version
        case uptimeSeconds = "uptime_seconds"
        case queueDepth = "queue_depth"
        case running
        case modelLoaded = "model_loaded"
    }
}

/// One model the daemon serves (today exactly one: --model).
public struct ModelInfo: Codable, Sendable, Equatable {
    /// The model's name (folder or file name without extension), as written into PNG metadata.
    public var name: String
    /// Where it is on disk.
    public var path: String
    /// Whether its weights are mapped now.
    public var loaded: Bool
    /// Seconds the model stays loaded after the last job; nil = forever, 0 = released at once.
    public var keepAliveSeconds: Double?
    /// Default image size in pixels (the model's sample size × VAE scale factor); nil if unreadable.
    public var defaultWidth: Int?
    public var defaultHeight: Int?
    /// Scheduler names a request may use.
    public var schedulers: [String]
    /// What a job that leaves them out gets: the model's own defaults (its sdd.json or GGUF sdd.defaults.*,
    /// and the scheduler its config names), else diffusers'. nil if unreadable; the scheduler is nil when the
    /// model's own is one sdd does not implement (requests must then name one).
    public var defaultSteps: Int?
    public var defaultGuidance: Double?
    public var defaultScheduler: String?
    /// The VAE folder that replaces the model's own (`sdd serve --vae`); nil: the model's.
    public var vae: String?

    public init(name: String, path: String, loaded: Bool, keepAliveSeconds: Double?, defaultWidth: Int?,
                defaultHeight: Int?, schedulers: [String], defaultSteps: Int? = nil, defaultGuidance: Double? = nil,
                defaultScheduler: String? = nil, vae: String? = nil) {
        self.name = name
        self.path = path
        self.loaded = loaded
        self.keepAliveSeconds = keepAliveSeconds
        self.defaultWidth = defaultWidth
        self.defaultHeight = defaultHeight
        self.schedulers = schedulers
        self.defaultSteps = defaultSteps
        self.defaultGuidance = defaultGuidance
        self.defaultScheduler = defaultScheduler
        self.vae = vae
    }

    enum CodingKeys: String, CodingKey {
        case name, path, loaded
        case keepAliveSeconds = "keep_alive_seconds"
        case defaultWidth = "default_width"
        case defaultHeight = "default_height"
        case schedulers
        case defaultSteps = "default_steps"
        case defaultGuidance = "default_guidance"
        case defaultScheduler = "default_scheduler"
        case vae
    }
}

/// GET /v1/models.
public struct ModelList: Codable, Sendable, Equatable {
    public var models: [ModelInfo]
    public init(models: [ModelInfo]) { self.models = models }
}
