"""A short soak in CI: 40 jobs, valid and hostile mixed, through the real worker process
(bench/soak.py runs the same driver with hundreds of jobs)."""

from __future__ import annotations

from soak import print_table, run_soak


def test_forty_mixed_jobs_leave_the_worker_as_they_found_it(server, host, jobs_dir, tmp_path):
    report = run_soak(server, host, jobs_dir, 40, tmp_path)
    print_table(report)
    assert report.unexpected == []
    assert report.leftovers == [] and report.end.children == 0
    # Flat after the warm-up round: no descriptor or thread per job (27 jobs later; a couple of
    # keep-alive sockets of the HTTP server come and go), bounded memory.
    assert report.end.fds <= report.baseline.fds + 2
    assert report.end.threads <= report.baseline.threads + 1
    assert report.rss_growth_mb < 40, report.rss_growth_mb
