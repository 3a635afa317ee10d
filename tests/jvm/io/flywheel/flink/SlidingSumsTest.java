package io.flywheel.flink;

import static org.junit.jupiter.api.Assertions.assertEquals;

import java.time.LocalDateTime;
import java.time.ZoneOffset;
import java.util.ArrayList;
import java.util.List;

import org.apache.flink.api.common.typeinfo.Types;
import org.apache.flink.runtime.checkpoint.OperatorSubtaskState;
import org.apache.flink.streaming.api.operators.KeyedProcessOperator;
import org.apache.flink.streaming.runtime.streamrecord.StreamRecord;
import org.apache.flink.streaming.util.KeyedOneInputStreamOperatorTestHarness;
import org.apache.flink.types.Row;
import org.junit.jupiter.api.Test;

/** A sliding window's sums from its panes: enter at the pane's end, leave one window later, netted. */
class SlidingSumsTest {
    private static final long MIN = 60_000;
    private static final long HOUR = 60 * MIN;

    private static KeyedOneInputStreamOperatorTestHarness<String, Row, Row> harness() throws Exception {
        // One key column, two sums, a 1-hour window.
        return new KeyedOneInputStreamOperatorTestHarness<>(
                new KeyedProcessOperator<>(new SlidingSums(1, 2, HOUR)), new RowKey(1), Types.STRING);
    }

    private static Row pane(String user, long a, long b, long endMs) {
        return Row.of(user, a, b, LocalDateTime.ofEpochSecond(endMs / 1000, 0, ZoneOffset.UTC));
    }

    /** The emitted rows as "key a b @minute". */
    private static List<String> emitted(KeyedOneInputStreamOperatorTestHarness<String, Row, Row> h) {
        List<String> out = new ArrayList<>();
        for (Object o : h.getOutput()) {
            if (o instanceof StreamRecord) {
                Row r = (Row) ((StreamRecord<?>) o).getValue();
                long minute = ((LocalDateTime) r.getField(3)).toEpochSecond(ZoneOffset.UTC) / 60;
                out.add(r.getField(0) + " " + r.getField(1) + " " + r.getField(2) + " @" + minute);
            }
        }
        return out;
    }

    @Test
    void sumsChangeWhenAPaneEntersOrLeavesAndAnEmptiedWindowEmitsZeros() throws Exception {
        try (var h = harness()) {
            h.open();
            h.processElement(pane("u", 1, 2, 5 * MIN), 5 * MIN - 1);
            h.processElement(pane("u", 3, 0, 10 * MIN), 10 * MIN - 1);
            h.processWatermark(10 * MIN);
            assertEquals(List.of("u 1 2 @5", "u 4 2 @10"), emitted(h));
            h.getOutput().clear();
            h.processWatermark(HOUR + 10 * MIN);  // both panes leave
            assertEquals(List.of("u 3 0 @65", "u 0 0 @70"), emitted(h));
            assertEquals(0, h.numKeyedStateEntries(), "an emptied window keeps no state");
        }
    }

    @Test
    void aPaneEnteringAsAnotherLeavesWithTheSameSumsChangesNothing() throws Exception {
        try (var h = harness()) {
            h.open();
            h.processElement(pane("u", 1, 0, 5 * MIN), 0);
            h.processElement(pane("u", 1, 0, HOUR + 5 * MIN), 0);  // enters as the first one leaves
            h.processWatermark(2 * HOUR + 5 * MIN);  // nothing at 65: the enter and the leave net out
            assertEquals(List.of("u 1 0 @5", "u 0 0 @125"), emitted(h));
        }
    }

    @Test
    void keysAreSummedApartAndComeBackSplit() throws Exception {
        try (var h = new KeyedOneInputStreamOperatorTestHarness<>(
                new KeyedProcessOperator<>(new SlidingSums(2, 1, HOUR)), new RowKey(2), Types.STRING)) {
            h.open();
            h.processElement(Row.of("u", "shoes", 2L, LocalDateTime.ofEpochSecond(300, 0, ZoneOffset.UTC)), 0);
            h.processElement(Row.of("u", "hats", 5L, LocalDateTime.ofEpochSecond(300, 0, ZoneOffset.UTC)), 0);
            h.processWatermark(5 * MIN);
            List<String> rows = new ArrayList<>();
            for (Object o : h.getOutput()) {
                if (o instanceof StreamRecord) {
                    Row r = (Row) ((StreamRecord<?>) o).getValue();
                    rows.add(r.getField(0) + "/" + r.getField(1) + "=" + r.getField(2));
                }
            }
            rows.sort(null);
            assertEquals(List.of("u/hats=5", "u/shoes=2"), rows);
        }
    }

    @Test
    void pendingMovesAndRunningSumsSurviveARestore() throws Exception {
        OperatorSubtaskState snapshot;
        try (var h = harness()) {
            h.open();
            h.processElement(pane("u", 1, 2, 5 * MIN), 0);
            h.processWatermark(5 * MIN);
            h.processElement(pane("u", 3, 0, 10 * MIN), 0);
            snapshot = h.snapshot(1, 10 * MIN);
        }
        try (var h = harness()) {
            h.initializeState(snapshot);
            h.open();
            h.processWatermark(HOUR + 10 * MIN);
            assertEquals(List.of("u 4 2 @10", "u 3 0 @65", "u 0 0 @70"), emitted(h));
        }
    }
}
