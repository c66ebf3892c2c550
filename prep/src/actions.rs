//! (issue 4: prep-arkit / RoomPlan vocabulary / action synthesis) — module under construction.
