"""The video worker: decodes, runs every frame through a function (downscale or an upscale provider), re-encodes
with H.264, HEVC or AV1 and keeps the audio and subtitle streams unchanged."""
