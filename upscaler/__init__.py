"""media-upscaler core: engine, media handling, providers, stores and jobs. No web framework, no AWS SDK here
at module level: the API, the video worker and the model server are thin shells over this package."""

__version__ = "0.1.0"
