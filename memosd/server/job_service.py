"""JobService: following and cancelling background jobs; each agent sees its own, the admin all."""

from __future__ import annotations

from memos_mip.bounds import quote
from memos_mip.v1 import job_pb2
from memosd.errors import NotFound
from memosd.server.auth import principal
from memosd.server.convert_tensor import job_to_proto


class JobService:
    def __init__(self, jobs):
        self.jobs = jobs

    def _visible(self, job_id: str):
        job = self.jobs.get(job_id)
        p = principal()
        if not (p.admin or job.owner == p.name):
            raise NotFound(f"no job with id {quote(job_id)} (finished jobs are kept for a while only)")
        return job

    async def GetJob(self, request, context):
        return job_pb2.GetJobResponse(job=job_to_proto(self._visible(request.id)))

    async def WatchJob(self, request, context):
        self._visible(request.id)
        async for job in self.jobs.watch(request.id):
            yield job_pb2.WatchJobResponse(job=job_to_proto(job))

    async def CancelJob(self, request, context):
        self._visible(request.id)
        return job_pb2.CancelJobResponse(job=job_to_proto(self.jobs.cancel(request.id)))

    async def ListJobs(self, request, context):
        p = principal()
        jobs = [j for j in self.jobs.list() if (p.admin or j.owner == p.name) and (request.include_finished or not j.finished)]
        return job_pb2.ListJobsResponse(jobs=[job_to_proto(j) for j in jobs])
