"""The bottom layer every other package of akd-mobile may import: user-facing errors, files
and the cache folder, the artifact formats, and the measurement result types. It imports
nothing from `akd_mobile`, `devices` or `latency_db`."""
