"""StatisticsSnapshot (plain Python, from service.statistics) -> Triton's ModelStatistics proto."""

from __future__ import annotations

from service.proto.inference import grpc_service_pb2 as pb
from service.repository import LoadedModel
from service.statistics import Duration


def statistics_proto(model: LoadedModel) -> pb.ModelStatistics:
    snap = model.telemetry.statistics.snapshot()  # type: ignore[attr-defined]
    s = snap.inference_stats
    return pb.ModelStatistics(
        name=snap.name,
        version=snap.version,
        last_inference=snap.last_inference,
        inference_count=snap.inference_count,
        execution_count=snap.execution_count,
        inference_stats=pb.InferStatistics(
            success=_d(s.success),
            fail=_d(s.fail),
            queue=_d(s.queue),
            compute_input=_d(s.compute_input),
            compute_infer=_d(s.compute_infer),
            compute_output=_d(s.compute_output),
        ),
        batch_stats=[
            pb.InferBatchStatistics(
                batch_size=b.batch_size,
                compute_input=_d(b.compute_input),
                compute_infer=_d(b.compute_infer),
                compute_output=_d(b.compute_output),
            )
            for b in snap.batch_stats
        ],
    )


def _d(d: Duration) -> pb.StatisticDuration:
    return pb.StatisticDuration(count=d.count, ns=d.ns)
