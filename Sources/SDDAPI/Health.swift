// Health and ModelInfo: GET /v1/health and GET /v1/models.

/// GET /v1/health: 200 while serving (status "ok"); 503 with status "degraded" and a `reason` while jobs cannot be
/// taken (the model is broken, the state directory is full), or "shutting_down" while stopping.
public struct Health: Codable, Sendable, Equatable {
    /// "ok", "degraded" or "shutting_down".
    public var status: String
    /// Why the status is "degraded" (nil otherwise).
    public var reason: String?
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
                modelLoaded: Bool, reason: String? = nil) {
        self.status = status
        self.reason = reason
        self.version = version
        self.uptimeSeconds = uptimeSeconds
        self.queueDepth = queueDepth
        self.running = running
        self.modelLoaded = modelLoaded
    }

    enum CodingKeys: String, CodingKey {
        case status, reason, version
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

/// GET /v1/models: sdd's `models`, and the same list in OpenAI's shape (`object: "list"`, `data`) for OpenAI clients.
public struct ModelList: Codable, Sendable, Equatable {
    public var models: [ModelInfo]
    /// "list" (OpenAI's list object); nil from daemons before the OpenAI routes.
    public var object: String?
    /// The models as OpenAI's `GET /v1/models` lists them.
    public var data: [OpenAIModel]?
    public init(models: [ModelInfo], object: String? = nil, data: [OpenAIModel]? = nil) {
        self.models = models
        self.object = object
        self.data = data
    }
}

/// One entry of OpenAI's model list: `{"id": …, "object": "model", "created": …, "owned_by": …}`.
public struct OpenAIModel: Codable, Sendable, Equatable {
    public var id: String
    public var object: String
    /// Seconds since the epoch (the daemon's start).
    public var created: Int
    public var ownedBy: String

    public init(id: String, created: Int, ownedBy: String = "sdd") {
        self.id = id
        self.object = "model"
        self.created = created
        self.ownedBy = ownedBy
    }

    enum CodingKeys: String, CodingKey {
        case id, object, created
        case ownedBy = "owned_by"
    }
}
