package io.flywheel.flink;

import org.apache.flink.api.java.functions.KeySelector;
import org.apache.flink.types.Row;

/**
 * An entity key as one String: a row's first {@code keys} fields (the entity key columns, STRING and never
 * null), joined by NUL, which no id contains. One String hashes and compares cheaply as keyed state's key
 * and as a map key; {@link #split} gives the fields back.
 */
public class RowKey implements KeySelector<Row, String> {
    private final int keys;

    public RowKey(int keys) {
        this.keys = keys;
    }

    @Override
    public String getKey(Row row) {
        return join(row, keys);
    }

    /** The first {@code keys} fields of {@code row}, joined. */
    public static String join(Row row, int keys) {
        String key = (String) row.getField(0);
        for (int i = 1; i < keys; i++) {
            key = key + '\u0000' + row.getField(i);
        }
        return key;
    }

    /** The fields of a joined key, in order. */
    public static String[] split(String key) {
        return key.split("\u0000", -1);
    }
}
