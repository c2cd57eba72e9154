"""The base floor: settings, error codes, the worker's lifetime, languages, the data types every
stage shares, and the start-up clock. It imports nothing from the floors above."""
