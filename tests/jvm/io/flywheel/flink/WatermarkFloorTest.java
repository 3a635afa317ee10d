package io.flywheel.flink;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertNull;

import java.time.Instant;

import org.apache.flink.runtime.checkpoint.OperatorSubtaskState;
import org.apache.flink.streaming.runtime.streamrecord.StreamRecord;
import org.apache.flink.streaming.util.OneInputStreamOperatorTestHarness;
import org.apache.flink.types.Row;
import org.junit.jupiter.api.Test;

/** After a restore, records are judged against at least the watermark that passed before the checkpoint. */
class WatermarkFloorTest {
    private static Row record(String id, Long wmMs) {
        return Row.of(id, wmMs == null ? null : Instant.ofEpochMilli(wmMs));
    }

    private static Instant wmOf(OneInputStreamOperatorTestHarness<Row, Row> h, int index) {
        Object o = h.getOutput().stream().filter(StreamRecord.class::isInstance).skip(index).findFirst().get();
        return (Instant) ((Row) ((StreamRecord<?>) o).getValue()).getField(1);
    }

    @Test
    void aFreshJobPassesRecordsAsTheyAre() throws Exception {
        try (var h = new OneInputStreamOperatorTestHarness<>(new WatermarkFloor(1))) {
            h.open();
            h.processElement(new StreamRecord<>(record("a", null)));
            h.processElement(new StreamRecord<>(record("b", 500L)));
            assertNull(wmOf(h, 0));
            assertEquals(Instant.ofEpochMilli(500), wmOf(h, 1));
        }
    }

    @Test
    void aRestoredJobRaisesAMissingOrLowerWatermarkToTheCheckpointedOne() throws Exception {
        OperatorSubtaskState snapshot;
        try (var h = new OneInputStreamOperatorTestHarness<>(new WatermarkFloor(1))) {
            h.open();
            h.processWatermark(1_000);
            snapshot = h.snapshot(1, 1_000);
        }
        try (var h = new OneInputStreamOperatorTestHarness<>(new WatermarkFloor(1))) {
            h.initializeState(snapshot);
            h.open();
            h.processElement(new StreamRecord<>(record("first read, no watermark yet", null)));
            h.processElement(new StreamRecord<>(record("behind the floor", 200L)));
            h.processElement(new StreamRecord<>(record("ahead of it", 2_000L)));
            assertEquals(Instant.ofEpochMilli(1_000), wmOf(h, 0));
            assertEquals(Instant.ofEpochMilli(1_000), wmOf(h, 1));
            assertEquals(Instant.ofEpochMilli(2_000), wmOf(h, 2));
        }
    }
}
