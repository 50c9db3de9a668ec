-- Leasing a delivery rewrites its row; with room on the page the new version stays on it
-- (a HOT update) and adds no index entries the next claim would have to step over.
ALTER TABLE webhook_deliveries SET (fillfactor = 70);
