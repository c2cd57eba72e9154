"""The job layer every interface shares: the input contract (request), one job from input to
output (worker), the error-code table (codes), the output (output) and its delivery when it is
too large for RunPod (results)."""
