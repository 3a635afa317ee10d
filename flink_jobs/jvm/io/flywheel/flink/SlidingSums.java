package io.flywheel.flink;

import java.time.Instant;
import java.time.LocalDateTime;
import java.time.ZoneOffset;

import org.apache.flink.api.common.state.MapState;
import org.apache.flink.api.common.state.MapStateDescriptor;
import org.apache.flink.api.common.state.ValueState;
import org.apache.flink.api.common.state.ValueStateDescriptor;
import org.apache.flink.api.common.typeinfo.PrimitiveArrayTypeInfo;
import org.apache.flink.api.common.typeinfo.TypeInformation;
import org.apache.flink.api.common.typeinfo.Types;
import org.apache.flink.api.common.functions.OpenContext;
import org.apache.flink.streaming.api.functions.KeyedProcessFunction;
import org.apache.flink.util.Collector;
import org.apache.flink.types.Row;

/**
 * A sliding window's sums for each key, from the key's panes (its sums per slide), emitted when they
 * change.
 *
 * <p>A window's value changes only when a pane enters it (at the pane's end) or leaves it (one window
 * later). So each pane becomes two moves: +sums at its end and -sums a window later. Moves at the same
 * time are netted. At the watermark, each move is added to the key's running sums, and the sums are
 * emitted, stamped with the move's time, unless the move nets to nothing.
 *
 * <p>In SQL this takes three steps (a union of the enter and leave rows, a tumbling window to net the
 * moves, an unbounded OVER aggregation for the running sums), each with its own keyed state and timers
 * and two behind a network exchange; here one keyed operator does it.
 *
 * <p>Input: the panes as Row(keys..., sums... (BIGINT), t), where t is the pane's window time, keyed by
 * {@link RowKey}. Output: Row(keys..., sums..., t) with t the move's time (a LocalDateTime in UTC). The
 * state is each key's running sums and its pending moves (a week of leave moves for the 7-day views).
 * Both are keyed state, checkpointed and restored with the job.
 */
public class SlidingSums extends KeyedProcessFunction<String, Row, Row> {
    private static final TypeInformation<long[]> LONGS = PrimitiveArrayTypeInfo.LONG_PRIMITIVE_ARRAY_TYPE_INFO;
    private final int keys;
    private final int sums;
    private final long sizeMs;
    private transient ValueState<long[]> running;
    private transient MapState<Long, long[]> pending;

    public SlidingSums(int keys, int sums, long sizeMs) {
        this.keys = keys;
        this.sums = sums;
        this.sizeMs = sizeMs;
    }

    /** The output's type: keys (comma-separated names) as STRING, sums as BIGINT, then t. */
    public static TypeInformation<Row> outputType(String keys, String sums) {
        String[] k = keys.split(","), s = sums.split(",");
        String[] names = new String[k.length + s.length + 1];
        TypeInformation<?>[] types = new TypeInformation<?>[names.length];
        for (int i = 0; i < names.length - 1; i++) {
            names[i] = i < k.length ? k[i] : s[i - k.length];
            types[i] = i < k.length ? Types.STRING : Types.LONG;
        }
        names[names.length - 1] = "t";
        types[names.length - 1] = Types.LOCAL_DATE_TIME;
        return Types.ROW_NAMED(names, types);
    }

    @Override
    public void open(OpenContext openContext) {
        running = getRuntimeContext()
                .getState(new ValueStateDescriptor<>("running", LONGS));
        pending = getRuntimeContext()
                .getMapState(new MapStateDescriptor<>("pending", Types.LONG, LONGS));
    }

    @Override
    public void processElement(Row pane, Context ctx, Collector<Row> out) throws Exception {
        long end = epochMillis(pane.getField(keys + sums));
        long[] delta = new long[sums];
        for (int i = 0; i < sums; i++) {
            Object v = pane.getField(keys + i);
            delta[i] = v == null ? 0 : (Long) v;
        }
        move(ctx, end, delta, 1);
        move(ctx, end + sizeMs, delta, -1);
    }

    private void move(Context ctx, long at, long[] delta, int sign) throws Exception {
        long[] net = pending.get(at);
        if (net == null) {
            net = new long[sums];
            ctx.timerService().registerEventTimeTimer(at);
        }
        for (int i = 0; i < sums; i++) {
            net[i] += sign * delta[i];
        }
        pending.put(at, net);
    }

    @Override
    public void onTimer(long at, OnTimerContext ctx, Collector<Row> out) throws Exception {
        long[] net = pending.get(at);
        pending.remove(at);
        if (net == null || isZero(net)) {
            return; // an enter and a leave that cancel: the window's value did not change
        }
        long[] total = running.value();
        if (total == null) {
            total = new long[sums];
        }
        for (int i = 0; i < sums; i++) {
            total[i] += net[i];
        }
        if (isZero(total)) {
            running.clear(); // the window is empty: emit its zeros, keep no state for the key
        } else {
            running.update(total);
        }
        Row row = new Row(keys + sums + 1);
        String[] parts = RowKey.split(ctx.getCurrentKey());
        for (int i = 0; i < keys; i++) {
            row.setField(i, parts[i]);
        }
        for (int i = 0; i < sums; i++) {
            row.setField(keys + i, total[i]);
        }
        row.setField(keys + sums, LocalDateTime.ofInstant(Instant.ofEpochMilli(at), ZoneOffset.UTC));
        out.collect(row);
    }

    private static boolean isZero(long[] values) {
        for (long v : values) {
            if (v != 0) {
                return false;
            }
        }
        return true;
    }

    private static long epochMillis(Object time) {
        if (time instanceof Instant) {
            return ((Instant) time).toEpochMilli();
        }
        return ((LocalDateTime) time).toInstant(ZoneOffset.UTC).toEpochMilli();
    }
}
