package io.flywheel.flink;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertFalse;
import static org.junit.jupiter.api.Assertions.assertNull;
import static org.junit.jupiter.api.Assertions.assertTrue;

import java.util.ArrayList;
import java.util.List;

import org.apache.flink.api.common.functions.util.ListCollector;
import org.apache.flink.table.data.RowData;
import org.junit.jupiter.api.Test;

/** JSON_FIELDS: top-level scalars, objects as NULL, extra fields kept as JSON, and parent.child reads inside an object. */
class JsonFieldsTest {
    private static final String FIELDS = "event_id,context,source,context.policy,context.team";

    private static RowData parse(String json) {
        List<RowData> out = new ArrayList<>();
        JsonFields f = new JsonFields();
        f.setCollector(new ListCollector<>(out));
        f.eval(json, FIELDS);
        assertEquals(1, out.size());
        return out.get(0);
    }

    // Columns: is_object, extras, has_<5 fields>, j_<5 fields>.
    private static String value(RowData row, int field) {
        return row.isNullAt(7 + field) ? null : row.getString(7 + field).toString();
    }

    @Test
    void readsScalarsInsideTheListedObjectAndLeavesTheObjectItselfNull() {
        RowData row = parse("{\"event_id\":\"e1\",\"context\":{\"policy\":\"v0003\",\"hour\":4,\"deep\":{\"policy\":\"no\"},"
                + "\"team\":null},\"source\":\"service\"}");
        assertTrue(row.getBoolean(0));
        assertTrue(row.isNullAt(1)); // fields inside context are never extras
        assertEquals("e1", value(row, 0));
        assertTrue(row.getBoolean(2 + 1));
        assertNull(value(row, 1)); // the object itself
        assertEquals("service", value(row, 2));
        assertTrue(row.getBoolean(2 + 3));
        assertEquals("v0003", value(row, 3)); // not the nested deep.policy
        assertTrue(row.getBoolean(2 + 4)); // present, as null
        assertNull(value(row, 4));
    }

    @Test
    void missingObjectOrChildIsAbsentAndTopLevelFieldsOutsideTheListAreKeptAsTheyCame() {
        RowData row = parse("{\"event_id\":\"e2\",\"policy\":\"v1\",\"app\":{\"v\":[1,2.5,\"\u00e9\"],\"n\":null},\"ok\":true}");
        // "policy" at the top level is not a contract field; values of every kind are copied in order
        assertEquals("{\"policy\":\"v1\",\"app\":{\"v\":[1,2.5,\"\u00e9\"],\"n\":null},\"ok\":true}", row.getString(1).toString());
        assertEquals("e2", value(row, 0));
        assertFalse(row.getBoolean(2 + 3));
        assertNull(value(row, 3));
        RowData scalar = parse("{\"event_id\":\"e3\",\"context\":\"text\"}");
        assertEquals("text", value(scalar, 1));
        assertFalse(scalar.getBoolean(2 + 3));
        RowData truncated = parse("{\"event_id\":\"e4\",\"extra\":1,\"context\":{\"policy\":\"v1\"");
        assertFalse(truncated.getBoolean(0));
        assertNull(value(truncated, 3));
        assertTrue(truncated.isNullAt(1)); // nothing of a record that is not one JSON object
    }
}
