package io.flywheel.flink;

import static org.junit.jupiter.api.Assertions.assertEquals;

import java.time.Instant;
import java.util.ArrayList;
import java.util.Arrays;
import java.util.List;

import org.apache.flink.runtime.checkpoint.OperatorSubtaskState;
import org.apache.flink.runtime.state.OperatorStateHandle;
import org.apache.flink.streaming.runtime.streamrecord.StreamRecord;
import org.apache.flink.streaming.util.OneInputStreamOperatorTestHarness;
import org.apache.flink.types.Row;
import org.junit.jupiter.api.Test;

/** A record's lateness bound: its partition's highest earlier event time minus the delay, in read order. */
class PartitionLatenessTest {
    private static final long DELAY = 1_000;

    private static Row record(int partition, long eventMs) {
        return record(partition, eventMs, null);
    }

    private static Row record(int partition, long eventMs, Long watermarkMs) {
        return Row.of(Instant.ofEpochMilli(eventMs), partition, watermarkMs == null ? null : Instant.ofEpochMilli(watermarkMs));
    }

    private static List<Long> bounds(OneInputStreamOperatorTestHarness<Row, Row> h) {
        List<Long> out = new ArrayList<>();
        for (Object o : h.getOutput()) {
            if (o instanceof StreamRecord<?> r) {
                Instant bound = (Instant) ((Row) r.getValue()).getField(2);
                out.add(bound == null ? null : bound.toEpochMilli());
            }
        }
        return out;
    }

    private static OneInputStreamOperatorTestHarness<Row, Row> harness() throws Exception {
        return new OneInputStreamOperatorTestHarness<>(new PartitionLateness(0, 1, 2, DELAY));
    }

    @Test
    void eachPartitionIsJudgedByItsOwnEarlierRecords() throws Exception {
        try (var h = harness()) {
            h.open();
            h.processElement(new StreamRecord<>(record(0, 10_000)));
            h.processElement(new StreamRecord<>(record(1, 2_000))); // far behind partition 0: not its business
            h.processElement(new StreamRecord<>(record(0, 8_000))); // out of order, within the delay of 10 s
            h.processElement(new StreamRecord<>(record(0, 12_000)));
            h.processElement(new StreamRecord<>(record(1, 1_500)));
            assertEquals(Arrays.asList(null, null, 9_000L, 9_000L, 1_000L), bounds(h));
        }
    }

    @Test
    void aHigherCurrentWatermarkWinsAsAfterAnIdlePartitionWakes() throws Exception {
        try (var h = harness()) {
            h.open();
            h.processElement(new StreamRecord<>(record(0, 10_000, 500L))); // first of its partition: the watermark
            h.processElement(new StreamRecord<>(record(0, 9_500, 7_000L))); // the partition's bound is higher
            h.processElement(new StreamRecord<>(record(1, 3_000, 20_000L))); // partition 1 woke behind it
            assertEquals(Arrays.asList(500L, 9_000L, 20_000L), bounds(h));
        }
    }

    @Test
    void aRestoredOperatorJudgesAsTheUninterruptedOneWould() throws Exception {
        long[][] first = {{0, 10_000}, {1, 5_000}};
        long[][] second = {{0, 3_000}, {1, 4_500}, {2, 100}};
        List<Long> uninterrupted;
        try (var h = harness()) {
            h.open();
            for (long[] r : first) h.processElement(new StreamRecord<>(record((int) r[0], r[1])));
            for (long[] r : second) h.processElement(new StreamRecord<>(record((int) r[0], r[1])));
            uninterrupted = bounds(h).subList(first.length, first.length + second.length);
        }
        OperatorSubtaskState snapshot;
        try (var h = harness()) {
            h.open();
            for (long[] r : first) h.processElement(new StreamRecord<>(record((int) r[0], r[1])));
            snapshot = h.snapshot(1, 1_000);
        }
        try (var h = harness()) {
            h.initializeState(snapshot);
            h.open();
            for (long[] r : second) h.processElement(new StreamRecord<>(record((int) r[0], r[1])));
            assertEquals(uninterrupted, bounds(h));
            assertEquals(Arrays.asList(9_000L, 4_000L, null), bounds(h));
        }
    }

    @Test
    void theMaximaAreSplitStateNotUnionState() throws Exception {
        // Flink cannot complete a checkpoint of a vertex with union state once some of its subtasks have
        // finished: a bounded replay's tail would go without checkpoints.
        try (var h = harness()) {
            h.open();
            h.processElement(new StreamRecord<>(record(0, 10_000)));
            OperatorSubtaskState snapshot = h.snapshot(1, 1_000);
            List<OperatorStateHandle.Mode> modes = new ArrayList<>();
            for (OperatorStateHandle handle : snapshot.getManagedOperatorState()) {
                handle.getStateNameToPartitionOffsets().values().forEach(m -> modes.add(m.getDistributionMode()));
            }
            assertEquals(List.of(OperatorStateHandle.Mode.SPLIT_DISTRIBUTE), modes);
        }
    }
}
