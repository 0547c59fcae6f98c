-- jsonsync schema, version 2: each object's JSON text beside its JSONB.
--
-- Lists send objects as they are stored. Turning JSONB back into text costs
-- PostgreSQL more than finding the rows (measured: a page of 100 records
-- read 2.5 times faster from a text column), so writers store the text they
-- already have, and lists read it. Rows written before this version have
-- NULL here and are read as data::text.
ALTER TABLE objects ADD COLUMN body TEXT;
