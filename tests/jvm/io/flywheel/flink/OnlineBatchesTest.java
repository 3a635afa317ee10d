package io.flywheel.flink;

import static org.junit.jupiter.api.Assertions.assertEquals;

import java.nio.charset.StandardCharsets;
import java.time.LocalDateTime;
import java.time.ZoneOffset;
import java.util.ArrayList;
import java.util.List;

import org.apache.flink.api.common.typeinfo.TypeInformation;
import org.apache.flink.api.common.typeinfo.Types;
import org.apache.flink.runtime.checkpoint.OperatorSubtaskState;
import org.apache.flink.streaming.runtime.streamrecord.StreamRecord;
import org.apache.flink.streaming.util.OneInputStreamOperatorTestHarness;
import org.apache.flink.types.Row;
import org.junit.jupiter.api.Test;

/** Each key's latest value, in batches, handed over live at every watermark or at the end of the input. */
class OnlineBatchesTest {
    private static final TypeInformation<Row> ROW = Types.ROW_NAMED(
            new String[] {"user_id", "clicks", "ctr", "event_timestamp"},
            Types.STRING, Types.LONG, Types.DOUBLE, Types.LOCAL_DATE_TIME);
    private static final long HOUR = 3_600_000;

    private static OneInputStreamOperatorTestHarness<Row, Row> harness(int batchSize) throws Exception {
        // Never live unless the watermark is within a minute of the wall clock; catch-up flush after an hour.
        return new OneInputStreamOperatorTestHarness<>(
                new OnlineBatches("user_stats", "user_id", "clicks,ctr", "", ROW, batchSize, 60_000, HOUR));
    }

    private static StreamRecord<Row> value(String user, long clicks, Double ctr, long endMs) {
        return new StreamRecord<>(Row.of(user, clicks, ctr, LocalDateTime.ofEpochSecond(endMs / 1000, 0, ZoneOffset.UTC)));
    }

    /** The JSON of each batch handed over, the opening empty batch included. */
    private static List<String> batches(OneInputStreamOperatorTestHarness<Row, Row> h) {
        List<String> out = new ArrayList<>();
        for (Object o : h.getOutput()) {
            if (o instanceof StreamRecord) {
                Row r = (Row) ((StreamRecord<?>) o).getValue();
                assertEquals("user_stats", r.getField(0));
                out.add(new String((byte[]) r.getField(1), StandardCharsets.UTF_8));
            }
        }
        return out;
    }

    @Test
    void opensWithAnEmptyBatchAndHandsOverEachKeysLatestValueAtTheEnd() throws Exception {
        var h = harness(500);
        h.open();
        h.processElement(value("u1", 1, 0.5, 1_000));
        h.processElement(value("u1", 3, null, 2_000));
        h.processElement(value("u1", 9, 0.1, 1_500));  // older than what the key has: ignored
        h.processWatermark(2_000);  // far behind the wall clock: not live, no hand-over
        assertEquals(List.of("[]"), batches(h));
        h.endInput();
        h.close();  // finishes the operator: the end of the input
        assertEquals(List.of("[]", "[[{\"user_id\":\"u1\"},2000,{\"clicks\":3,\"ctr\":null}]]"), batches(h));
    }

    @Test
    void liveValuesAreHandedOverAtEveryWatermarkInBatchesOfTheConfiguredSize() throws Exception {
        long now = System.currentTimeMillis() / 1000 * 1000;
        try (var h = harness(2)) {
            h.open();
            for (int i = 0; i < 5; i++) {
                h.processElement(value("u" + i, i, 1.0, now));
            }
            h.processWatermark(now);
            List<String> out = batches(h);
            assertEquals(4, out.size(), "the empty opening batch, then 2 + 2 + 1 values: " + out);
            assertEquals(5, String.join("", out).split("user_id").length - 1);
        }
    }

    @Test
    void valuesNotHandedOverYetSurviveARestore() throws Exception {
        OperatorSubtaskState snapshot;
        try (var h = harness(500)) {
            h.open();
            h.processElement(value("u1", 4, 0.25, 1_000));
            snapshot = h.snapshot(1, 1_000);
        }
        var h = harness(500);
        h.initializeState(snapshot);
        h.open();
        h.endInput();
        h.close();
        assertEquals(List.of("[]", "[[{\"user_id\":\"u1\"},1000,{\"clicks\":4,\"ctr\":0.25}]]"), batches(h));
    }
}
